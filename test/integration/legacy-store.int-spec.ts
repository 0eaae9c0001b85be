import { once } from 'node:events';
import { fingerprintOfHash, sha256Hex } from '@keyhole/core';
import { LegacyScanEntry, LegacyStoreUnavailable, LegacyTokenStore } from '@keyhole/legacy-store';
import { Redis } from 'ioredis';
import { captureLogs } from '../support/log-capture';
import { startRedisServer, TestRedisServer } from '../support/redis-server';
import { waitUntil, withDeadline } from '../support/wait';

/*
 * The legacy token store against a real redis-server of its own (not the shared one, the harness's
 * launcher), written "as the legacy system would" with a plain client, then stopped, killed and
 * restarted under the store's feet.
 */

const TIMEOUT_MS = 250;
const INSTANCE_A = '11111111-1111-4111-8111-111111111111';
const INSTANCE_B = '22222222-2222-4222-8222-222222222222';
const INSTANCE_C = '33333333-3333-4333-8333-333333333333';
const INSTANCE_D = '44444444-4444-4444-8444-444444444444';

function uuid(n: number): string {
  return `aaaaaaaa-0000-4000-8000-${n.toString(16).padStart(12, '0')}`;
}

function novaValue(token: string, fields: Record<string, unknown> = {}): string {
  return JSON.stringify({
    token,
    instance_uuid: INSTANCE_A,
    console_type: 'novnc',
    host: '192.0.2.10',
    port: 5900,
    internal_access_path: null,
    access_url: `http://proxy.example:6080/vnc_auto.html?path=%3Ftoken%3D${token}#frag`,
    last_activity_at: 1700000000.25,
    ...fields,
  });
}

async function commandStats(client: Redis, command: string): Promise<Record<string, number>> {
  const info = await client.info('commandstats');
  const line = info.split('\r\n').find((entry) => entry.startsWith(`cmdstat_${command}:`));
  if (!line) {
    return {};
  }
  return Object.fromEntries(
    line
      .slice(line.indexOf(':') + 1)
      .split(',')
      .map((pair) => pair.split('='))
      .map(([name, value]) => [name, Number(value)]),
  );
}

async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of iterable) {
    items.push(item);
  }
  return items;
}

type ScannedToken = Extract<LegacyScanEntry, { kind: 'token' }>;

/** What a scan yields: its tokens (without `kind`), and how many entries it skipped for each reason. */
async function scanAll(store: LegacyTokenStore): Promise<{ found: Omit<ScannedToken, 'kind'>[]; skipped: Record<string, number> }> {
  const found: Omit<ScannedToken, 'kind'>[] = [];
  const skipped: Record<string, number> = {};
  for (const entry of await collect(store.scan())) {
    if (entry.kind === 'token') {
      const { kind: _kind, ...rest } = entry;
      found.push(rest);
    } else {
      skipped[entry.reason] = (skipped[entry.reason] ?? 0) + 1;
    }
  }
  return { found, skipped };
}

describe('LegacyTokenStore on a real Redis', () => {
  let redis: TestRedisServer;
  let raw: Redis;
  const stores: LegacyTokenStore[] = [];
  const logs = captureLogs('legacy-store-test');
  // As Nest's Logger calls it: fields, message, then the context.
  const logger = {
    warn: (fields: Record<string, unknown>, message: string) => logs.logger.warn(fields, message, 'LegacyTokenStore'),
    log: (fields: Record<string, unknown>, message: string) => logs.logger.log(fields, message, 'LegacyTokenStore'),
  };
  const timings: Record<string, string> = {};

  function openStore(format: 'nova' | 'websockify', keyPrefix: string): LegacyTokenStore {
    const store = new LegacyTokenStore({ redisUrl: redis.url, format, keyPrefix, timeoutMs: TIMEOUT_MS }, logger);
    stores.push(store);
    return store;
  }

  /** Waits until a lookup of `token` answers (with a value or null) rather than failing. */
  function untilAnswering(store: LegacyTokenStore, token: string, what: string): Promise<true> {
    return waitUntil(
      () =>
        store.lookup(token).then(
          () => true,
          () => undefined,
        ),
      5000,
      what,
    );
  }

  /** Waits until a lookup of `token` finds it again. */
  function untilFound(store: LegacyTokenStore, token: string): Promise<true> {
    return waitUntil(
      async () => ((await store.lookup(token).catch(() => null)) !== null ? true : undefined),
      5000,
      'lookups to work again',
    );
  }

  async function readyStore(format: 'nova' | 'websockify', keyPrefix: string): Promise<LegacyTokenStore> {
    const store = openStore(format, keyPrefix);
    // Commands are not queued before the connection is up: wait for it as a caller's readiness check would.
    await untilAnswering(store, 'warm-up', 'the store to connect');
    return store;
  }

  beforeAll(async () => {
    redis = await startRedisServer();
    raw = new Redis({ host: '127.0.0.1', port: redis.port, retryStrategy: () => 50 });
    raw.on('error', () => undefined);
  });

  afterAll(async () => {
    await Promise.all(stores.map((store) => store.close()));
    raw?.disconnect();
    await redis?.close();
    if (Object.keys(timings).length > 0) {
      console.log(`legacy store timings: ${JSON.stringify(timings)}`);
    }
  });

  describe('lookup', () => {
    it('finds Nova consoleauth tokens with every field and expiresAt from the key TTL', async () => {
      const store = await readyStore('nova', 'nova:');
      const unprefixed = await readyStore('nova', '');
      const [t1, t2, t3] = [uuid(1), uuid(2), uuid(3)];
      await raw.set(`nova:${t1}`, novaValue(t1), 'EX', 600);
      await raw.set(
        `nova:${t2}`,
        novaValue(t2, { port: '5901', host: 'fd00::5', access_url: null, console_type: 'serial', internal_access_path: '/console?x=1' }),
      );
      await raw.set(t3, novaValue(t3, { instance_uuid: INSTANCE_B }), 'EX', 60);

      const nowSeconds = Date.now() / 1000;
      const first = await store.lookup(t1);
      expect(first).toEqual({
        instanceUuid: INSTANCE_A,
        consoleType: 'novnc',
        host: '192.0.2.10',
        port: 5900,
        internalAccessPath: null,
        accessUrlBase: 'http://proxy.example:6080/vnc_auto.html',
        expiresAt: expect.any(Number),
      });
      expect(Math.abs(first!.expiresAt! - (nowSeconds + 600))).toBeLessThanOrEqual(2);

      expect(await store.lookup(t2)).toEqual({
        instanceUuid: INSTANCE_A,
        consoleType: 'serial',
        host: 'fd00::5',
        port: 5901,
        internalAccessPath: '/console?x=1',
        accessUrlBase: null,
        expiresAt: null,
      });

      const third = await unprefixed.lookup(t3);
      expect(third).toMatchObject({ instanceUuid: INSTANCE_B, host: '192.0.2.10', port: 5900 });
      expect(Math.abs(third!.expiresAt! - (nowSeconds + 60))).toBeLessThanOrEqual(2);
      // The prefix is part of the key: the other store does not see it.
      expect(await store.lookup(t3)).toBeNull();
      expect(store.healthy).toBe(true);
    });

    it('finds websockify tokens in both forms, with and without a namespace, IPv6 in brackets', async () => {
      const namespaced = await readyStore('websockify', 'console-ns:');
      const plain = await readyStore('websockify', '');
      await raw.set('console-ns:ws-json', '{"host": "10.0.0.5:5900"}', 'EX', 300);
      await raw.set('console-ns:ws-plain', '10.0.0.6:5901\n');
      await raw.set('console-ns:ws-ipv6-json', '{"host": "[::1]:5902"}');
      await raw.set('ws-ipv6-plain', '[fd00::9]:5903');
      await raw.set('ws-bare', 'compute-1.example:5904');

      const json = await namespaced.lookup('ws-json');
      expect(json).toEqual({
        instanceUuid: null,
        consoleType: null,
        host: '10.0.0.5',
        port: 5900,
        internalAccessPath: null,
        accessUrlBase: null,
        expiresAt: expect.any(Number),
      });
      expect(Math.abs(json!.expiresAt! - (Date.now() / 1000 + 300))).toBeLessThanOrEqual(2);
      expect(await namespaced.lookup('ws-plain')).toMatchObject({ host: '10.0.0.6', port: 5901, expiresAt: null });
      expect(await namespaced.lookup('ws-ipv6-json')).toMatchObject({ host: '::1', port: 5902 });
      expect(await plain.lookup('ws-ipv6-plain')).toMatchObject({ host: 'fd00::9', port: 5903 });
      expect(await plain.lookup('ws-bare')).toMatchObject({ host: 'compute-1.example', port: 5904 });
      expect(await plain.lookup('ws-json')).toBeNull();
    });

    it('answers null for unknown and expired tokens, and refuses oversized or unprintable ones without asking Redis', async () => {
      const store = await readyStore('nova', 'nova:');
      expect(await store.lookup(uuid(404))).toBeNull();

      const expiring = uuid(5);
      await raw.set(`nova:${expiring}`, novaValue(expiring), 'PX', 30);
      await waitUntil(async () => ((await raw.exists(`nova:${expiring}`)) === 0 ? true : undefined), 2000, 'the key to expire');
      expect(await store.lookup(expiring)).toBeNull();

      const long = 'x'.repeat(257);
      await raw.set(`nova:${long}`, novaValue(long));
      const before = (await commandStats(raw, 'getrange')).calls ?? 0;
      expect(await store.lookup(long)).toBeNull();
      expect(await store.lookup('abc\ndef')).toBeNull();
      expect(await store.lookup('')).toBeNull();
      expect((await commandStats(raw, 'getrange')).calls ?? 0).toBe(before);
    });

    it('answers null with one warning naming the field, never the token, for malformed values', async () => {
      const nova = await readyStore('nova', 'bad:');
      const websockify = await readyStore('websockify', 'badws:');
      const cases: [LegacyTokenStore, string, string | Buffer, string][] = [
        [nova, 'bad-not-json', 'host=1.2.3.4', 'value'],
        [nova, 'bad-no-host', novaValue('bad-no-host', { host: undefined }), 'host'],
        [nova, 'bad-port-zero', novaValue('bad-port-zero', { port: 0 }), 'port'],
        [nova, 'bad-port-abc', novaValue('bad-port-abc', { port: 'abc' }), 'port'],
        [nova, 'bad-huge', novaValue('bad-huge', { console_type: 'x'.repeat(70 * 1024) }), 'value'],
        [nova, 'bad-array', JSON.stringify([{ host: '1.2.3.4', port: 5900 }]), 'value'],
        [nova, 'bad-crlf-path', novaValue('bad-crlf-path', { internal_access_path: '/a\r\nX: y' }), 'internal_access_path'],
        [nova, 'bad-instance', novaValue('bad-instance', { instance_uuid: 'not-a-uuid' }), 'instance_uuid'],
        [nova, 'bad-binary', Buffer.from([0x7b, 0xfe, 0xff, 0x7d]), 'value'],
        [websockify, 'badws-no-port', '10.0.0.5', 'value'],
        [websockify, 'badws-port-zero', '{"host": "10.0.0.5:0"}', 'port'],
        [websockify, 'badws-port-abc', '10.0.0.5:abc', 'port'],
        [websockify, 'badws-no-host', '{"target": "10.0.0.5:5900"}', 'host'],
        [websockify, 'badws-array', '["10.0.0.5:5900"]', 'host'],
        [websockify, 'badws-not-json', '{"host": ', 'value'],
      ];
      for (const [store, token, value, field] of cases) {
        await raw.set(`${store === nova ? 'bad:' : 'badws:'}${token}`, value);
        const linesBefore = logs.lines.length;
        expect(await store.lookup(token)).toBeNull();
        const warnings = logs.lines.slice(linesBefore).map((line) => JSON.parse(line));
        expect(warnings).toEqual([
          expect.objectContaining({
            level: 'warn',
            fingerprint: fingerprintOfHash(sha256Hex(token)),
            field,
            msg: 'legacy token value is malformed; ignored',
          }),
        ]);
        expect(logs.lines.slice(linesBefore).join('\n')).not.toContain(token);
      }

      // A key that is not a string, and a Nova per-instance list presented as a token.
      await raw.hset('bad:bad-hash', 'host', '10.0.0.5');
      await raw.set(`bad:${INSTANCE_C}`, JSON.stringify([uuid(9)]));
      for (const token of ['bad-hash', INSTANCE_C]) {
        const linesBefore = logs.lines.length;
        expect(await nova.lookup(token)).toBeNull();
        expect(logs.lines.slice(linesBefore)).toHaveLength(1);
        expect(logs.lines.slice(linesBefore)[0]).toContain(fingerprintOfHash(sha256Hex(token)));
      }
      expect(logs.text()).not.toContain('10.0.0.5:5900');
      expect(nova.healthy).toBe(true);
    });

    it('answers in one round trip, well under the timeout', async () => {
      const store = await readyStore('nova', 'nova:');
      const token = uuid(20);
      await raw.set(`nova:${token}`, novaValue(token), 'EX', 600);
      const durations: number[] = [];
      for (let i = 0; i < 300; i += 1) {
        const started = process.hrtime.bigint();
        expect(await store.lookup(token)).not.toBeNull();
        durations.push(Number(process.hrtime.bigint() - started) / 1e6);
      }
      durations.sort((a, b) => a - b);
      const p50 = durations[Math.floor(durations.length * 0.5)];
      const p99 = durations[Math.floor(durations.length * 0.99)];
      timings.lookupP50Ms = p50.toFixed(3);
      timings.lookupP99Ms = p99.toFixed(3);
      expect(p99).toBeLessThan(TIMEOUT_MS / 2);
    });
  });

  describe('write', () => {
    const authorization = {
      instanceUuid: INSTANCE_A,
      consoleType: 'novnc',
      host: '192.0.2.20',
      port: 5900,
      internalAccessPath: null,
      accessUrl: 'http://proxy.example:6080/vnc_lite.html?path=%3Ftoken%3Dabc',
    };

    it('writes Nova values and the per-instance list as consoleauth did, pruning tokens that are gone', async () => {
      const store = await readyStore('nova', 'dual:');
      const [first, second, third] = ['kh-first-token', 'kh-second-token', 'kh-third-token'];
      const before = Date.now() / 1000;
      await store.write(first, authorization, 300);

      expect(JSON.parse((await raw.get(`dual:${first}`))!)).toEqual({
        token: first,
        instance_uuid: INSTANCE_A,
        console_type: 'novnc',
        host: '192.0.2.20',
        port: 5900,
        internal_access_path: null,
        access_url: authorization.accessUrl,
        last_activity_at: expect.any(Number),
      });
      expect(JSON.parse((await raw.get(`dual:${first}`))!).last_activity_at).toBeGreaterThanOrEqual(before - 1);
      expect(await raw.ttl(`dual:${first}`)).toBeGreaterThanOrEqual(299);
      expect(JSON.parse((await raw.get(`dual:${INSTANCE_A}`))!)).toEqual([first]);
      expect(await raw.ttl(`dual:${INSTANCE_A}`)).toBeGreaterThanOrEqual(299);

      await store.write(second, { ...authorization, host: 'fd00::20', port: 5901 }, 600);
      expect(JSON.parse((await raw.get(`dual:${INSTANCE_A}`))!)).toEqual([first, second]);
      expect(await raw.ttl(`dual:${INSTANCE_A}`)).toBeGreaterThanOrEqual(599);
      expect(JSON.parse((await raw.get(`dual:${second}`))!).host).toBe('fd00::20');

      // The first token's key disappears (expiry); the next write prunes it from the list, which
      // keeps living as long as its longest-lived token.
      await raw.del(`dual:${first}`);
      await store.write(third, authorization, 60);
      expect(JSON.parse((await raw.get(`dual:${INSTANCE_A}`))!)).toEqual([second, third]);
      expect(await raw.ttl(`dual:${INSTANCE_A}`)).toBeGreaterThan(500);
      expect(await raw.ttl(`dual:${third}`)).toBeLessThanOrEqual(60);

      // What keyhole wrote, keyhole (and an old proxy) reads back.
      expect(await store.lookup(third)).toMatchObject({
        instanceUuid: INSTANCE_A,
        host: '192.0.2.20',
        port: 5900,
        accessUrlBase: 'http://proxy.example:6080/vnc_lite.html',
      });
    });

    it('loses no list entry when writes for one instance race', async () => {
      const store = await readyStore('nova', 'race:');
      const tokens = Array.from({ length: 25 }, (_, index) => `kh-race-${index}`);
      await Promise.all(tokens.map((token) => store.write(token, { ...authorization, instanceUuid: INSTANCE_B }, 120)));
      expect(JSON.parse((await raw.get(`race:${INSTANCE_B}`))!).sort()).toEqual([...tokens].sort());
    });

    it('sends its Lua script once per connection, then by SHA1, and again when Redis lost it (SCRIPT FLUSH)', async () => {
      const store = await readyStore('nova', 'sha:');
      const evals = async () => (await commandStats(raw, 'eval')).calls ?? 0;
      const evalsBefore = await evals();
      const shasBefore = (await commandStats(raw, 'evalsha')).calls ?? 0;
      for (const token of ['kh-sha-1', 'kh-sha-2', 'kh-sha-3']) {
        await store.write(token, authorization, 60);
      }
      expect(await evals()).toBe(evalsBefore + 1);
      expect((await commandStats(raw, 'evalsha')).calls ?? 0).toBeGreaterThanOrEqual(shasBefore + 2);

      await raw.script('FLUSH');
      await store.write('kh-sha-4', authorization, 60);
      expect(await evals()).toBe(evalsBefore + 2);
      expect(JSON.parse((await raw.get(`sha:${INSTANCE_A}`))!)).toEqual(['kh-sha-1', 'kh-sha-2', 'kh-sha-3', 'kh-sha-4']);
    });

    it('writes websockify values as {"host": "HOST:PORT"}, IPv6 in brackets, with the TTL', async () => {
      const store = await readyStore('websockify', 'wsdual:');
      await store.write('kh-ws-token', authorization, 120);
      await store.write('kh-ws-token6', { ...authorization, host: 'fd00::1' }, 120);
      expect(await raw.get('wsdual:kh-ws-token')).toBe('{"host":"192.0.2.20:5900"}');
      expect(await raw.get('wsdual:kh-ws-token6')).toBe('{"host":"[fd00::1]:5900"}');
      expect(await raw.ttl('wsdual:kh-ws-token')).toBeGreaterThanOrEqual(119);
      expect(await raw.ttl('wsdual:kh-ws-token')).toBeLessThanOrEqual(120);
      expect(await raw.exists(`wsdual:${INSTANCE_A}`)).toBe(0);
      expect(await store.lookup('kh-ws-token6')).toMatchObject({ host: 'fd00::1', port: 5900 });
    });
  });

  describe('deleteInstance', () => {
    it("deletes the instance's listed tokens and its list, and never sends DEL without keys", async () => {
      const store = await readyStore('nova', 'del:');
      const authorization = {
        consoleType: 'novnc',
        host: '192.0.2.30',
        port: 5900,
        internalAccessPath: null,
        accessUrl: 'http://p.example/',
      };
      await store.write('kh-del-a1', { ...authorization, instanceUuid: INSTANCE_A }, 300);
      await store.write('kh-del-a2', { ...authorization, instanceUuid: INSTANCE_A }, 300);
      await store.write('kh-del-b1', { ...authorization, instanceUuid: INSTANCE_B }, 300);
      // An empty list, and a list naming a key that is not this instance's token.
      await raw.set(`del:${INSTANCE_C}`, '[]');
      await raw.set('del:unrelated', 'keep me');
      await raw.set(`del:${INSTANCE_D}`, JSON.stringify(['unrelated', 'kh-del-b1']));

      const statsBefore = await commandStats(raw, 'del');
      // monitor() opens a connection of its own.
      const monitor = await raw.monitor();
      const seen: string[][] = [];
      monitor.on('monitor', (_time: string, args: string[]) => seen.push(args));
      try {
        expect(await store.deleteInstance(INSTANCE_A)).toBe(2);
        expect(await store.deleteInstance(INSTANCE_C)).toBe(0);
        expect(await store.deleteInstance(INSTANCE_D)).toBe(0);
        expect(await store.deleteInstance('55555555-5555-4555-8555-555555555555')).toBe(0);
        expect(await openStore('websockify', 'del:').deleteInstance(INSTANCE_B)).toBe(0);
        await raw.echo('monitor-sentinel');
        await waitUntil(
          () => (seen.some((args) => args[0] === 'echo' && args[1] === 'monitor-sentinel') ? true : undefined),
          2000,
          'MONITOR to catch up',
        );
      } finally {
        monitor.disconnect();
      }

      expect(await raw.exists('del:kh-del-a1', 'del:kh-del-a2', `del:${INSTANCE_A}`, `del:${INSTANCE_C}`, `del:${INSTANCE_D}`)).toBe(0);
      // Listed under D, but not D's tokens: left alone.
      expect(await raw.exists('del:kh-del-b1', `del:${INSTANCE_B}`, 'del:unrelated')).toBe(3);
      const deletes = seen.filter((args) => args[0].toLowerCase() === 'del');
      expect(deletes.length).toBeGreaterThan(0);
      expect(deletes.filter((args) => args.length < 2)).toEqual([]);
      const statsAfter = await commandStats(raw, 'del');
      expect(statsAfter.rejected_calls ?? 0).toBe(statsBefore.rejected_calls ?? 0);
      expect(statsAfter.failed_calls ?? 0).toBe(statsBefore.failed_calls ?? 0);
    });
  });

  describe('scan', () => {
    it('yields every live Nova token once, skipping list keys, foreign keys and malformed values', async () => {
      const store = await readyStore('nova', 'scan:');
      const live = Array.from({ length: 230 }, (_, index) => uuid(1000 + index));
      const pipeline = raw.pipeline();
      for (const token of live) {
        pipeline.set(`scan:${token}`, novaValue(token), 'EX', 900);
      }
      await pipeline.exec();
      await raw.set(`scan:${uuid(2000)}`, novaValue(uuid(2000))); // no TTL
      await raw.set(`scan:${INSTANCE_A}`, JSON.stringify(live.slice(0, 3)));
      await raw.set('scan:malformed-1', 'not json');
      await raw.set('scan:malformed-2', novaValue('malformed-2', { port: 0 }));
      await raw.hset('scan:a-hash', 'x', 'y');
      await raw.set(`scanX:${uuid(3000)}`, novaValue(uuid(3000)));
      const linesBefore = logs.lines.length;

      const { found, skipped } = await scanAll(store);
      expect(found.map((entry) => entry.token).sort()).toEqual([...live, uuid(2000)].sort());
      // Reported for the import: two malformed values and a key that is not a string.
      expect(skipped).toEqual({ malformed: 2, 'not-a-token': 1 });
      const withTtl = found.find((entry) => entry.token === live[0])!;
      expect(withTtl.ttlSeconds).toBeGreaterThanOrEqual(898);
      expect(withTtl.authorization).toMatchObject({ instanceUuid: INSTANCE_A, host: '192.0.2.10', port: 5900 });
      expect(Math.abs(withTtl.authorization.expiresAt! - (Date.now() / 1000 + 900))).toBeLessThanOrEqual(3);
      expect(found.find((entry) => entry.token === uuid(2000))).toMatchObject({ ttlSeconds: null, authorization: { expiresAt: null } });

      const warnings = logs.lines.slice(linesBefore).map((line) => JSON.parse(line));
      expect(warnings.map((line) => line.fingerprint).sort()).toEqual(
        [fingerprintOfHash(sha256Hex('malformed-1')), fingerprintOfHash(sha256Hex('malformed-2'))].sort(),
      );
    });

    it('yields websockify tokens, and matches a prefix with glob characters literally', async () => {
      const store = await readyStore('websockify', 'w*[s]:');
      await raw.set('w*[s]:one', '{"host": "10.0.1.1:5900"}', 'EX', 100);
      await raw.set('w*[s]:two', '[fd00::2]:5901');
      await raw.set('wXs:three', '10.0.1.3:5900');
      await raw.set('w*[s]:bad', 'nope');
      const { found, skipped } = await scanAll(store);
      expect(skipped).toEqual({ malformed: 1 });
      expect(found.sort((a, b) => a.token.localeCompare(b.token))).toEqual([
        {
          token: 'one',
          authorization: expect.objectContaining({ host: '10.0.1.1', port: 5900, instanceUuid: null }),
          ttlSeconds: expect.any(Number),
        },
        { token: 'two', authorization: expect.objectContaining({ host: 'fd00::2', port: 5901 }), ttlSeconds: null },
      ]);
    });
  });

  describe('when Redis goes away', () => {
    it('throws LegacyStoreUnavailable within the timeout when Redis hangs, and recovers when it resumes', async () => {
      const store = await readyStore('nova', 'nova:');
      const token = uuid(30);
      await raw.set(`nova:${token}`, novaValue(token), 'EX', 600);
      expect(await store.lookup(token)).not.toBeNull();

      redis.pause();
      try {
        const started = Date.now();
        await expect(store.lookup(token)).rejects.toBeInstanceOf(LegacyStoreUnavailable);
        const elapsed = Date.now() - started;
        timings.hungRedisDetectionMs = String(elapsed);
        expect(elapsed).toBeGreaterThanOrEqual(TIMEOUT_MS - 20);
        expect(elapsed).toBeLessThan(1000);
        await expect(store.lookup(token)).rejects.toMatchObject({
          code: 'SERVICE_UNAVAILABLE',
          reason: expect.stringMatching(/^(timeout|disconnected)$/),
        });
        expect(store.healthy).toBe(false);
      } finally {
        redis.resume();
      }
      const resumed = Date.now();
      await untilFound(store, token);
      timings.resumeRecoveryMs = String(Date.now() - resumed);
      expect(store.healthy).toBe(true);
    });

    it('throws LegacyStoreUnavailable at once when Redis is killed, and works again after a restart on the same port', async () => {
      const store = await readyStore('nova', 'nova:');
      const websockify = await readyStore('websockify', 'ws:');
      const token = uuid(31);
      await raw.set(`nova:${token}`, novaValue(token), 'EX', 600);
      expect(await store.lookup(token)).not.toBeNull();

      await redis.kill();
      const started = Date.now();
      const failure = await store.lookup(token).then(
        () => undefined,
        (error: unknown) => error,
      );
      const elapsed = Date.now() - started;
      timings.killedRedisDetectionMs = String(elapsed);
      expect(failure).toBeInstanceOf(LegacyStoreUnavailable);
      expect(String((failure as Error).message)).not.toContain(token);
      expect(elapsed).toBeLessThan(1000);
      expect(store.healthy).toBe(false);
      for (const call of [
        () =>
          store.write(
            'kh-down',
            { instanceUuid: INSTANCE_A, consoleType: 'novnc', host: 'h', port: 1, internalAccessPath: null, accessUrl: 'http://p/' },
            60,
          ),
        () => store.deleteInstance(INSTANCE_A),
        () => collect(store.scan()),
        () => websockify.lookup('anything'),
      ]) {
        const callStarted = Date.now();
        await expect(call()).rejects.toBeInstanceOf(LegacyStoreUnavailable);
        expect(Date.now() - callStarted).toBeLessThan(1000);
      }

      await redis.restart();
      const restarted = Date.now();
      if (raw.status !== 'ready') {
        await withDeadline(once(raw, 'ready'), 5000, 'the plain client to reconnect');
      }
      await raw.set(`nova:${token}`, novaValue(token), 'EX', 600);
      await untilFound(store, token);
      timings.restartRecoveryMs = String(Date.now() - restarted);
      expect(store.healthy).toBe(true);
      // Each store reconnects on its own schedule: until it has, it fails closed, as above.
      await untilAnswering(websockify, 'anything', 'the second store to answer again');
      expect(await websockify.lookup('anything')).toBeNull();
      // One warning for the outage per store, not one per reconnect attempt.
      expect(logs.lines.filter((line) => line.includes('legacy token store unreachable')).length).toBeLessThanOrEqual(2 * stores.length);
      expect(logs.text()).not.toContain(token);
    });
  });
});
