import { availableParallelism } from 'node:os';
import { z } from 'zod';
import { ENVIRONMENT_SCHEMA } from './config.schema';

/**
 * The environment's variables, validated, shaped into the configuration a process uses. What each
 * field means, its unit and default: the variable it comes from, in config.schema.ts.
 */
export const CONFIG_SCHEMA = ENVIRONMENT_SCHEMA.transform((env) => ({
  database: {
    controlUrl: env.KEYHOLE_DATABASE_URL,
    poolSize: env.KEYHOLE_DB_POOL_SIZE,
    connectTimeoutMs: env.KEYHOLE_DB_CONNECT_TIMEOUT_MS,
    queryTimeoutMs: env.KEYHOLE_DB_QUERY_TIMEOUT_MS,
    statementTimeoutMs: env.KEYHOLE_DB_STATEMENT_TIMEOUT_MS,
    migrationTimeoutMs: env.KEYHOLE_DB_MIGRATION_TIMEOUT_MS,
  },
  log: { level: env.KEYHOLE_LOG_LEVEL },
  api: {
    host: env.KEYHOLE_API_HOST,
    port: env.KEYHOLE_API_PORT,
    bodyLimitBytes: env.KEYHOLE_API_BODY_LIMIT_BYTES,
    trustedProxies: env.KEYHOLE_TRUSTED_PROXIES,
    tls: tlsSettings('api', {
      certFile: env.KEYHOLE_API_TLS_CERT_FILE,
      keyFile: env.KEYHOLE_API_TLS_KEY_FILE,
      clientCaFile: env.KEYHOLE_API_TLS_CLIENT_CA_FILE,
      only: env.KEYHOLE_API_TLS_ONLY,
    }),
  },
  tokens: {
    defaultTtlSeconds: env.KEYHOLE_TOKEN_TTL_SECONDS,
    maxTtlSeconds: env.KEYHOLE_TOKEN_MAX_TTL_SECONDS,
    purgeBatchSize: env.KEYHOLE_PURGE_BATCH_SIZE,
  },
  proxy: {
    cellName: env.KEYHOLE_CELL_NAME,
    cellDatabaseUrl: env.KEYHOLE_CELL_DATABASE_URL,
    host: env.KEYHOLE_PROXY_HOST,
    port: env.KEYHOLE_PROXY_PORT,
    instance: env.KEYHOLE_PROXY_INSTANCE,
    workers: env.KEYHOLE_PROXY_WORKERS === 'auto' ? availableParallelism() : env.KEYHOLE_PROXY_WORKERS,
    allowedOrigins: env.KEYHOLE_PROXY_ALLOWED_ORIGINS.map((origin) => origin.toLowerCase()),
    consoleTypes: env.KEYHOLE_PROXY_CONSOLE_TYPES,
    trustedProxies: env.KEYHOLE_TRUSTED_PROXIES,
    connectTimeoutMs: env.KEYHOLE_PROXY_CONNECT_TIMEOUT_MS,
    heartbeatIntervalMs: env.KEYHOLE_PROXY_HEARTBEAT_INTERVAL_MS,
    idleTimeoutMs: env.KEYHOLE_PROXY_IDLE_TIMEOUT_MS,
    maxSessionMs: env.KEYHOLE_PROXY_MAX_SESSION_MS,
    maxFrameBytes: env.KEYHOLE_PROXY_MAX_FRAME_BYTES,
    enforceTokenExpiry: env.KEYHOLE_PROXY_ENFORCE_TOKEN_EXPIRY,
    drainGraceMs: env.KEYHOLE_PROXY_DRAIN_GRACE_MS,
    headersTimeoutMs: env.KEYHOLE_PROXY_HEADERS_TIMEOUT_MS,
    maxPendingPerAddress: env.KEYHOLE_PROXY_MAX_PENDING_PER_ADDRESS,
    maxPending: env.KEYHOLE_PROXY_MAX_PENDING,
    sessionHeartbeatMs: env.KEYHOLE_PROXY_SESSION_HEARTBEAT_MS,
    sessionStaleMs: env.KEYHOLE_PROXY_SESSION_STALE_MS,
    sessionWriteQueue: env.KEYHOLE_PROXY_SESSION_WRITE_QUEUE,
    spiceHtml5Dir: env.KEYHOLE_PROXY_SPICE_HTML5_DIR,
    frameAncestors: env.KEYHOLE_PROXY_FRAME_ANCESTORS,
    vnc: {
      authSchemes: env.KEYHOLE_PROXY_VNC_AUTH_SCHEMES,
      vencrypt: vencryptSettings(
        env.KEYHOLE_PROXY_VENCRYPT_CA_FILE,
        env.KEYHOLE_PROXY_VENCRYPT_CLIENT_CERT_FILE,
        env.KEYHOLE_PROXY_VENCRYPT_CLIENT_KEY_FILE,
      ),
    },
    tls: tlsSettings('proxy', {
      certFile: env.KEYHOLE_PROXY_TLS_CERT_FILE,
      keyFile: env.KEYHOLE_PROXY_TLS_KEY_FILE,
      clientCaFile: undefined,
      only: env.KEYHOLE_PROXY_TLS_ONLY,
    }),
  },
  routes: { file: env.KEYHOLE_ROUTES_FILE },
  connector: { runDir: env.KEYHOLE_RUN_DIR },
  legacy: {
    redisUrl: env.KEYHOLE_LEGACY_REDIS_URL,
    format: env.KEYHOLE_LEGACY_FORMAT,
    keyPrefix: env.KEYHOLE_LEGACY_KEY_PREFIX,
    osloCacheExpirationSeconds: env.KEYHOLE_LEGACY_OSLO_CACHE_EXPIRATION_SECONDS,
    timeoutMs: env.KEYHOLE_LEGACY_TIMEOUT_MS,
    forcedFallback: env.KEYHOLE_LEGACY_FALLBACK === undefined ? undefined : env.KEYHOLE_LEGACY_FALLBACK === 'on',
    dualWrite: env.KEYHOLE_LEGACY_DUAL_WRITE,
  },
  purge: {
    intervalMs: env.KEYHOLE_PURGE_INTERVAL_MS,
    pauseMs: env.KEYHOLE_PURGE_PAUSE_MS,
    sessionRetentionMs: env.KEYHOLE_SESSION_RETENTION_MS,
    sessionReapIntervalMs: env.KEYHOLE_SESSION_REAP_INTERVAL_MS,
  },
  credentials: {
    cacheTtlMs: env.KEYHOLE_CREDENTIAL_CACHE_TTL_MS,
    argon2: {
      memoryKib: env.KEYHOLE_ARGON2_MEMORY_KIB,
      timeCost: env.KEYHOLE_ARGON2_TIME_COST,
      parallelism: env.KEYHOLE_ARGON2_PARALLELISM,
      concurrency: env.KEYHOLE_ARGON2_CONCURRENCY ?? availableParallelism(),
      queueLimit: env.KEYHOLE_ARGON2_QUEUE,
    },
    throttle: {
      failuresPerKey: env.KEYHOLE_AUTH_FAILURES_PER_KEY,
      failuresPerAddress: env.KEYHOLE_AUTH_FAILURES_PER_ADDRESS,
      windowSeconds: env.KEYHOLE_AUTH_FAILURE_WINDOW_SECONDS,
      store: env.KEYHOLE_AUTH_LIMITER,
      redisUrl: env.KEYHOLE_AUTH_LIMITER_REDIS_URL,
      storeTimeoutMs: env.KEYHOLE_AUTH_LIMITER_TIMEOUT_MS,
    },
  },
}));

/** Which server a TLS setting belongs to: its variables are `KEYHOLE_<API|PROXY>_TLS_*`. */
export type TlsListenerName = 'api' | 'proxy';

/** A server's own TLS (README's TLS): its files are read and checked at start, and again on SIGHUP. */
export interface TlsSettings {
  listener: TlsListenerName;
  certFile: string;
  keyFile: string;
  /** CA whose client certificates authenticate a caller (the token API only). */
  clientCaFile: string | undefined;
  /** Refuse plain HTTP on the port instead of serving both. */
  only: boolean;
}

interface TlsVariables {
  certFile: string | undefined;
  keyFile: string | undefined;
  clientCaFile: string | undefined;
  only: boolean;
}

/** The settings when a certificate is configured; null (plain HTTP) otherwise. Completeness is checked by `loadConfig`. */
function tlsSettings(listener: TlsListenerName, variables: TlsVariables): TlsSettings | null {
  if (variables.certFile === undefined || variables.keyFile === undefined) {
    return null;
  }
  return { listener, certFile: variables.certFile, keyFile: variables.keyFile, clientCaFile: variables.clientCaFile, only: variables.only };
}

/** A VNC security type the proxy may use with a hypervisor (README's VNC security to the hypervisor). */
export type VncAuthScheme = 'none' | 'vencrypt';

/** The files of the proxy's VeNCrypt client: read at start and again on SIGHUP. */
export interface VencryptSettings {
  /** CA that must have signed the hypervisor's certificate. */
  caFile: string;
  /** The proxy's client certificate and key (both or neither; checked by `loadConfig`). */
  clientCertFile: string | undefined;
  clientKeyFile: string | undefined;
}

/** The variables of the VeNCrypt files, for messages that name the setting to fix. */
export const VENCRYPT_VARIABLE_NAMES = {
  schemes: 'KEYHOLE_PROXY_VNC_AUTH_SCHEMES',
  ca: 'KEYHOLE_PROXY_VENCRYPT_CA_FILE',
  clientCert: 'KEYHOLE_PROXY_VENCRYPT_CLIENT_CERT_FILE',
  clientKey: 'KEYHOLE_PROXY_VENCRYPT_CLIENT_KEY_FILE',
} as const;

/** The settings when a CA is configured; null otherwise. Completeness is checked by `loadConfig`. */
function vencryptSettings(
  caFile: string | undefined,
  clientCertFile: string | undefined,
  clientKeyFile: string | undefined,
): VencryptSettings | null {
  return caFile === undefined ? null : { caFile, clientCertFile, clientKeyFile };
}

/** The names of a server's TLS variables, for messages that name the setting to fix. */
export function tlsVariableNames(listener: TlsListenerName): { cert: string; key: string; clientCa: string; only: string } {
  const prefix = `KEYHOLE_${listener.toUpperCase()}_TLS`;
  return { cert: `${prefix}_CERT_FILE`, key: `${prefix}_KEY_FILE`, clientCa: `${prefix}_CLIENT_CA_FILE`, only: `${prefix}_ONLY` };
}

/** Validated configuration of a keyhole process; built once at start by `loadConfig`. */
export type KeyholeConfig = z.output<typeof CONFIG_SCHEMA>;

export const KEYHOLE_CONFIG = Symbol('keyhole.config');

export class ConfigurationError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid keyhole configuration:\n${problems.map((problem) => `  - ${problem}`).join('\n')}`);
    this.name = 'ConfigurationError';
  }
}

/** Settings that are gone, and what replaces them: named at start rather than silently ignored. */
const RETIRED_SETTINGS: Readonly<Record<string, string>> = {
  KEYHOLE_API_TRUST_PROXY: 'replaced by KEYHOLE_TRUSTED_PROXIES (the addresses or CIDRs of the proxies to believe)',
  KEYHOLE_PROXY_TRUST_PROXY: 'replaced by KEYHOLE_TRUSTED_PROXIES (the addresses or CIDRs of the proxies to believe)',
};

/**
 * KEYHOLE_* names that are not settings: the tests' own, and the secrets a routes file names
 * (`key: env:KEYHOLE_SSH_KEY_TENANT7`), which only the routes file's reader looks at.
 */
const NOT_SETTINGS = ['KEYHOLE_TEST_', 'KEYHOLE_SSH_KEY_', 'KEYHOLE_SSH_PASSPHRASE_'];

/**
 * Reads and validates every KEYHOLE_* variable at once; throws one ConfigurationError naming every
 * bad variable. Empty strings count as unset, so `KEYHOLE_X=` falls back to the default.
 */
export function loadConfig(environment: NodeJS.ProcessEnv = process.env): KeyholeConfig {
  const relevant: Record<string, string> = {};
  for (const [name, value] of Object.entries(environment)) {
    if (name.startsWith('KEYHOLE_') && value !== undefined && value !== '') {
      relevant[name] = value;
    }
  }
  // A misspelt variable would silently fall back to its default: name it instead.
  const unknown = Object.keys(relevant)
    .filter((name) => !(name in ENVIRONMENT_SCHEMA.shape) && !NOT_SETTINGS.some((prefix) => name.startsWith(prefix)))
    .map((name) => `${name}: ${RETIRED_SETTINGS[name] ?? 'not a keyhole setting (misspelt?)'}`);
  const parsed = CONFIG_SCHEMA.safeParse(relevant);
  if (!parsed.success || unknown.length > 0) {
    throw new ConfigurationError([...unknown, ...(parsed.success ? [] : describeIssues(parsed.error))]);
  }
  const config = parsed.data;
  const problems: string[] = [];
  if (config.database.statementTimeoutMs > config.database.queryTimeoutMs) {
    problems.push(
      'KEYHOLE_DB_STATEMENT_TIMEOUT_MS: must not exceed KEYHOLE_DB_QUERY_TIMEOUT_MS (the server cancels a slow statement before the client gives up on it)',
    );
  }
  if (config.proxy.sessionStaleMs < 2 * config.proxy.sessionHeartbeatMs) {
    problems.push('KEYHOLE_PROXY_SESSION_STALE_MS: must be at least twice KEYHOLE_PROXY_SESSION_HEARTBEAT_MS');
  }
  if (config.legacy.dualWrite && !config.legacy.redisUrl) {
    problems.push('KEYHOLE_LEGACY_DUAL_WRITE: needs KEYHOLE_LEGACY_REDIS_URL');
  }
  if (config.legacy.forcedFallback === true && !config.legacy.redisUrl) {
    problems.push('KEYHOLE_LEGACY_FALLBACK: on needs KEYHOLE_LEGACY_REDIS_URL');
  }
  if (config.credentials.throttle.store === 'redis' && !config.credentials.throttle.redisUrl) {
    problems.push('KEYHOLE_AUTH_LIMITER: redis needs KEYHOLE_AUTH_LIMITER_REDIS_URL');
  }
  if (config.tokens.defaultTtlSeconds > config.tokens.maxTtlSeconds) {
    problems.push('KEYHOLE_TOKEN_TTL_SECONDS: must not exceed KEYHOLE_TOKEN_MAX_TTL_SECONDS');
  }
  problems.push(...tlsProblems('api', relevant), ...tlsProblems('proxy', relevant), ...vencryptProblems(config, relevant));
  if (problems.length > 0) {
    throw new ConfigurationError(problems);
  }
  return config;
}

/** A certificate without its key (or the reverse), or a TLS option without a certificate. */
function tlsProblems(listener: TlsListenerName, relevant: Record<string, string>): string[] {
  const names = tlsVariableNames(listener);
  const has = (name: string) => relevant[name] !== undefined;
  const problems: string[] = [];
  if (has(names.cert) && !has(names.key)) {
    problems.push(`${names.key}: required with ${names.cert}`);
  }
  if (has(names.key) && !has(names.cert)) {
    problems.push(`${names.cert}: required with ${names.key}`);
  }
  // Validated as a boolean already: only an "on" value needs a certificate.
  const onlyTls = ['true', '1', 'yes', 'on'].includes(relevant[names.only] ?? '');
  for (const [option, set] of [
    [names.clientCa, has(names.clientCa)],
    [names.only, onlyTls],
  ] as const) {
    if (set && !has(names.cert)) {
      problems.push(`${option}: needs ${names.cert} and ${names.key}`);
    }
  }
  return problems;
}

/**
 * VeNCrypt needs a CA (a hypervisor's certificate is never taken unverified); a client certificate
 * needs its key and the reverse; VeNCrypt files with `vencrypt` not allowed would do nothing.
 */
function vencryptProblems(config: KeyholeConfig, relevant: Record<string, string>): string[] {
  const names = VENCRYPT_VARIABLE_NAMES;
  const has = (name: string) => relevant[name] !== undefined;
  const problems: string[] = [];
  if (config.proxy.vnc.authSchemes.includes('vencrypt')) {
    if (!has(names.ca)) {
      problems.push(`${names.ca}: required when ${names.schemes} allows vencrypt (the CA that signed the hypervisors' certificates)`);
    }
  } else {
    for (const name of [names.ca, names.clientCert, names.clientKey].filter(has)) {
      problems.push(`${name}: has no effect unless ${names.schemes} allows vencrypt`);
    }
  }
  if (has(names.clientCert) && !has(names.clientKey)) {
    problems.push(`${names.clientKey}: required with ${names.clientCert}`);
  }
  if (has(names.clientKey) && !has(names.clientCert)) {
    problems.push(`${names.clientCert}: required with ${names.clientKey}`);
  }
  return problems;
}

/** The proxy's cell and its database, or a clear error naming what is missing. */
export function requireProxyCell(config: KeyholeConfig): { cellName: string; cellDatabaseUrl: string } {
  const problems: string[] = [];
  if (!config.proxy.cellName) {
    problems.push('KEYHOLE_CELL_NAME: required (the cell this proxy serves)');
  }
  if (!config.proxy.cellDatabaseUrl) {
    problems.push("KEYHOLE_CELL_DATABASE_URL: required (that cell's database URL)");
  }
  if (problems.length > 0) {
    throw new ConfigurationError(problems);
  }
  return { cellName: config.proxy.cellName as string, cellDatabaseUrl: config.proxy.cellDatabaseUrl as string };
}

/** The control database URL, or a clear error for commands that cannot work without it. */
export function requireControlUrl(config: KeyholeConfig): string {
  if (!config.database.controlUrl) {
    throw new ConfigurationError(['KEYHOLE_DATABASE_URL: required (the control database URL)']);
  }
  return config.database.controlUrl;
}

function describeIssues(error: z.ZodError): string[] {
  // Values are not echoed: a database URL may hold a password.
  return error.issues.map((issue) => `${issue.path.join('.') || '(environment)'}: ${issue.message}`);
}
