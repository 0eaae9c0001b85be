import { availableParallelism } from 'node:os';
import { ConfigurationError, loadConfig } from './keyhole.config';

describe('loadConfig', () => {
  it('has documented defaults with nothing set', () => {
    const config = loadConfig({});
    expect(config.database.controlUrl).toBeUndefined();
    expect(config.api).toEqual({ host: '127.0.0.1', port: 7880, bodyLimitBytes: 16384, trustedProxies: [], tls: null });
    expect(config.proxy.tls).toBeNull();
    expect(config.tokens).toEqual({ defaultTtlSeconds: 600, maxTtlSeconds: 86400, purgeBatchSize: 5000 });
    expect(config.credentials.argon2).toEqual({
      memoryKib: 19456,
      timeCost: 2,
      parallelism: 1,
      concurrency: availableParallelism(),
      queueLimit: 64,
    });
    expect(config.credentials.throttle).toEqual({
      failuresPerKey: 10,
      failuresPerAddress: 30,
      windowSeconds: 60,
      store: 'memory',
      redisUrl: undefined,
      storeTimeoutMs: 250,
    });
    expect(config.purge).toEqual({
      intervalMs: 300_000,
      sessionRetentionMs: 30 * 24 * 3600 * 1000,
      pauseMs: 0,
      sessionReapIntervalMs: 10_000,
    });
  });

  it('reads the variables it knows and treats empty ones as unset', () => {
    const config = loadConfig({
      KEYHOLE_API_PORT: '9000',
      KEYHOLE_TRUSTED_PROXIES: '10.0.0.0/8, 2001:db8::/32,192.0.2.7',
      KEYHOLE_TOKEN_TTL_SECONDS: '',
    });
    expect(config.api.port).toBe(9000);
    expect(config.api.trustedProxies).toEqual(['10.0.0.0/8', '2001:db8::/32', '192.0.2.7']);
    expect(config.proxy.trustedProxies).toEqual(config.api.trustedProxies);
    expect(config.tokens.defaultTtlSeconds).toBe(600);
  });

  it('leaves the ssh keys a routes file names to the routes file, and still names a misspelt setting', () => {
    expect(() => loadConfig({ KEYHOLE_SSH_KEY_TENANT7: 'key', KEYHOLE_SSH_PASSPHRASE_TENANT7: 'secret' })).not.toThrow();
    expect(() => loadConfig({ KEYHOLE_SSH_KEYS: 'key' })).toThrow('KEYHOLE_SSH_KEYS: not a keyhole setting (misspelt?)');
  });

  it('serves TLS when a certificate and its key are set, and names a half-configured TLS setting', () => {
    const config = loadConfig({
      KEYHOLE_API_TLS_CERT_FILE: '/etc/keyhole/api.pem',
      KEYHOLE_API_TLS_KEY_FILE: '/etc/keyhole/api-key.pem',
      KEYHOLE_API_TLS_CLIENT_CA_FILE: '/etc/keyhole/agents-ca.pem',
      KEYHOLE_PROXY_TLS_CERT_FILE: '/etc/keyhole/proxy.pem',
      KEYHOLE_PROXY_TLS_KEY_FILE: '/etc/keyhole/proxy-key.pem',
      KEYHOLE_PROXY_TLS_ONLY: 'true',
    });
    expect(config.api.tls).toEqual({
      listener: 'api',
      certFile: '/etc/keyhole/api.pem',
      keyFile: '/etc/keyhole/api-key.pem',
      clientCaFile: '/etc/keyhole/agents-ca.pem',
      only: false,
    });
    expect(config.proxy.tls).toEqual({
      listener: 'proxy',
      certFile: '/etc/keyhole/proxy.pem',
      keyFile: '/etc/keyhole/proxy-key.pem',
      clientCaFile: undefined,
      only: true,
    });
    expect(() => loadConfig({ KEYHOLE_PROXY_TLS_CERT_FILE: '/c.pem' })).toThrow(
      'KEYHOLE_PROXY_TLS_KEY_FILE: required with KEYHOLE_PROXY_TLS_CERT_FILE',
    );
    expect(() => loadConfig({ KEYHOLE_API_TLS_KEY_FILE: '/k.pem' })).toThrow(
      'KEYHOLE_API_TLS_CERT_FILE: required with KEYHOLE_API_TLS_KEY_FILE',
    );
    expect(() => loadConfig({ KEYHOLE_API_TLS_ONLY: 'on' })).toThrow('KEYHOLE_API_TLS_ONLY: needs KEYHOLE_API_TLS_CERT_FILE');
    expect(() => loadConfig({ KEYHOLE_API_TLS_CLIENT_CA_FILE: '/ca.pem' })).toThrow('KEYHOLE_API_TLS_CLIENT_CA_FILE: needs');
    expect(() => loadConfig({ KEYHOLE_PROXY_TLS_ONLY: 'false' })).not.toThrow();
    expect(() => loadConfig({ KEYHOLE_PROXY_TLS_CLIENT_CA_FILE: '/ca.pem' })).toThrow('not a keyhole setting');
  });

  it('refuses trusted proxies that are not addresses or CIDRs, and names the settings they replace', () => {
    for (const bad of ['proxy.example.com', '10.0.0.0/33', '10.0.0.0/8/1', '::1/129', '10.0.0.0/x']) {
      expect(() => loadConfig({ KEYHOLE_TRUSTED_PROXIES: bad })).toThrow(/KEYHOLE_TRUSTED_PROXIES/);
    }
    expect(() => loadConfig({ KEYHOLE_PROXY_TRUST_PROXY: 'true' })).toThrow(
      /KEYHOLE_PROXY_TRUST_PROXY: replaced by KEYHOLE_TRUSTED_PROXIES/,
    );
    expect(() => loadConfig({ KEYHOLE_API_TRUST_PROXY: 'true' })).toThrow(/KEYHOLE_API_TRUST_PROXY: replaced by KEYHOLE_TRUSTED_PROXIES/);
  });

  it('names every bad variable at once, without echoing values', () => {
    let error: unknown;
    try {
      loadConfig({
        KEYHOLE_DATABASE_URL: 'mysql://root:hunter2@db/x',
        KEYHOLE_API_PORT: '70000',
        KEYHOLE_LOG_LEVEL: 'loud',
      });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ConfigurationError);
    const message = (error as ConfigurationError).message;
    expect(message).toContain('KEYHOLE_DATABASE_URL');
    expect(message).toContain('KEYHOLE_API_PORT');
    expect(message).toContain('KEYHOLE_LOG_LEVEL');
    expect(message).not.toContain('hunter2');
  });

  it('runs one proxy process by default, a number of them when asked, or one per CPU with auto', () => {
    expect(loadConfig({}).proxy.workers).toBe(1);
    expect(loadConfig({ KEYHOLE_PROXY_WORKERS: '4' }).proxy.workers).toBe(4);
    expect(loadConfig({ KEYHOLE_PROXY_WORKERS: 'auto' }).proxy.workers).toBe(availableParallelism());
    for (const bad of ['0', '257', '1.5', 'all']) {
      expect(() => loadConfig({ KEYHOLE_PROXY_WORKERS: bad })).toThrow(/KEYHOLE_PROXY_WORKERS/);
    }
  });

  it('bounds the pause between purge batches', () => {
    expect(loadConfig({ KEYHOLE_PURGE_PAUSE_MS: '0' }).purge.pauseMs).toBe(0);
    expect(() => loadConfig({ KEYHOLE_PURGE_PAUSE_MS: '10001' })).toThrow(/KEYHOLE_PURGE_PAUSE_MS/);
    expect(() => loadConfig({ KEYHOLE_PURGE_PAUSE_MS: '-1' })).toThrow(/KEYHOLE_PURGE_PAUSE_MS/);
  });

  it('refuses a default TTL above the maximum', () => {
    expect(() => loadConfig({ KEYHOLE_TOKEN_TTL_SECONDS: '100', KEYHOLE_TOKEN_MAX_TTL_SECONDS: '50' })).toThrow(
      /KEYHOLE_TOKEN_TTL_SECONDS/,
    );
  });

  it('has client-side database deadlines by default, and keeps the server statement timeout within the query deadline', () => {
    expect(loadConfig({}).database).toMatchObject({
      connectTimeoutMs: 5_000,
      queryTimeoutMs: 5_000,
      statementTimeoutMs: 4_000,
      migrationTimeoutMs: 600_000,
    });
    expect(loadConfig({ KEYHOLE_DB_QUERY_TIMEOUT_MS: '1000', KEYHOLE_DB_STATEMENT_TIMEOUT_MS: '1000' }).database.queryTimeoutMs).toBe(
      1_000,
    );
    expect(() => loadConfig({ KEYHOLE_DB_QUERY_TIMEOUT_MS: '1000' })).toThrow(
      /KEYHOLE_DB_STATEMENT_TIMEOUT_MS: must not exceed KEYHOLE_DB_QUERY_TIMEOUT_MS/,
    );
    expect(() => loadConfig({ KEYHOLE_DB_QUERY_TIMEOUT_MS: '50' })).toThrow(/KEYHOLE_DB_QUERY_TIMEOUT_MS/);
  });

  it('needs a Redis URL for the redis failure store, and bounds the argon2 cap', () => {
    expect(() => loadConfig({ KEYHOLE_AUTH_LIMITER: 'redis' })).toThrow(/KEYHOLE_AUTH_LIMITER: redis needs KEYHOLE_AUTH_LIMITER_REDIS_URL/);
    expect(
      loadConfig({ KEYHOLE_AUTH_LIMITER: 'redis', KEYHOLE_AUTH_LIMITER_REDIS_URL: 'redis://127.0.0.1:6379' }).credentials.throttle.store,
    ).toBe('redis');
    expect(loadConfig({ KEYHOLE_ARGON2_CONCURRENCY: '3' }).credentials.argon2.concurrency).toBe(3);
    expect(() => loadConfig({ KEYHOLE_ARGON2_CONCURRENCY: '0' })).toThrow(/KEYHOLE_ARGON2_CONCURRENCY/);
    expect(() => loadConfig({ KEYHOLE_AUTH_LIMITER: 'etcd' })).toThrow(/KEYHOLE_AUTH_LIMITER/);
  });
  it('passes VNC bytes through by default, and needs a CA for vencrypt, a key with a client certificate, and vencrypt for its files', () => {
    expect(loadConfig({}).proxy.vnc).toEqual({ authSchemes: ['none'], vencrypt: null });
    expect(
      loadConfig({
        KEYHOLE_PROXY_VNC_AUTH_SCHEMES: 'vencrypt, none',
        KEYHOLE_PROXY_VENCRYPT_CA_FILE: '/etc/ca.pem',
        KEYHOLE_PROXY_VENCRYPT_CLIENT_CERT_FILE: '/etc/client.pem',
        KEYHOLE_PROXY_VENCRYPT_CLIENT_KEY_FILE: '/etc/client-key.pem',
      }).proxy.vnc,
    ).toEqual({
      authSchemes: ['vencrypt', 'none'],
      vencrypt: { caFile: '/etc/ca.pem', clientCertFile: '/etc/client.pem', clientKeyFile: '/etc/client-key.pem' },
    });
    const problems = (environment: Record<string, string>): string[] => {
      try {
        loadConfig(environment);
        return [];
      } catch (error) {
        return (error as ConfigurationError).problems;
      }
    };
    expect(problems({ KEYHOLE_PROXY_VNC_AUTH_SCHEMES: 'vencrypt' })).toEqual([
      expect.stringMatching(/^KEYHOLE_PROXY_VENCRYPT_CA_FILE: required when KEYHOLE_PROXY_VNC_AUTH_SCHEMES allows vencrypt/),
    ]);
    expect(
      problems({
        KEYHOLE_PROXY_VNC_AUTH_SCHEMES: 'vencrypt',
        KEYHOLE_PROXY_VENCRYPT_CA_FILE: '/ca',
        KEYHOLE_PROXY_VENCRYPT_CLIENT_CERT_FILE: '/c',
      }),
    ).toEqual(['KEYHOLE_PROXY_VENCRYPT_CLIENT_KEY_FILE: required with KEYHOLE_PROXY_VENCRYPT_CLIENT_CERT_FILE']);
    expect(problems({ KEYHOLE_PROXY_VENCRYPT_CA_FILE: '/ca' })).toEqual([
      'KEYHOLE_PROXY_VENCRYPT_CA_FILE: has no effect unless KEYHOLE_PROXY_VNC_AUTH_SCHEMES allows vencrypt',
    ]);
    expect(problems({ KEYHOLE_PROXY_VNC_AUTH_SCHEMES: 'vnc' })).toHaveLength(1);
    expect(problems({ KEYHOLE_PROXY_VNC_AUTH_SCHEMES: 'none,none' })).toEqual([expect.stringContaining('each scheme once')]);
  });
});
