import { randomUUID } from 'node:crypto';
import { Clock } from '@keyhole/core';
import { LegacyScanEntry, LegacyTokenStore, osloCacheKey } from '@keyhole/legacy-store';
import { Redis } from 'ioredis';
import { captureLogs } from '../support/log-capture';
import {
  committedOsloCacheFixture,
  consoleauthRead,
  generateOsloCacheEntries,
  OsloCacheDump,
  OsloCacheFixtureToken,
} from '../support/real/oslo-cache';
import { startRedisServer, TestRedisServer } from '../support/redis-server';
import { waitUntil } from '../support/wait';

/*
 * The oslo-cache-redis format against a real Redis and the real Nova consoleauth storage code
 * (Stein's, on Debian's nova.cache_utils + oslo.cache 3.2.0 + dogpile.cache 1.1.8, run by
 * /usr/bin/python3): the committed fixture bytes and freshly generated ones are read by keyhole,
 * and what keyhole writes is read, extended and deleted by consoleauth itself.
 */

jest.setTimeout(60_000);

const TIMEOUT_MS = 1_000;

let redis: TestRedisServer;
const clients: Redis[] = [];
const stores: LegacyTokenStore[] = [];
const logs = captureLogs('legacy-oslo-cache-test');
const logger = {
  warn: (fields: Record<string, unknown>, message: string) => logs.logger.warn(fields, message, 'LegacyTokenStore'),
  log: (fields: Record<string, unknown>, message: string) => logs.logger.log(fields, message, 'LegacyTokenStore'),
};

/** A database of the test Redis of its own (the generator wants an empty one). */
function databaseUrl(db: number): string {
  return `${redis.url}/${db}`;
}

function client(db: number): Redis {
  const created = new Redis(databaseUrl(db), { maxRetriesPerRequest: 1 });
  clients.push(created);
  return created;
}

async function openStore(db: number, osloCacheExpirationSeconds?: number, keyPrefix = '', clock?: Clock): Promise<LegacyTokenStore> {
  const store = new LegacyTokenStore(
    { redisUrl: databaseUrl(db), format: 'oslo-cache-redis', keyPrefix, timeoutMs: TIMEOUT_MS, osloCacheExpirationSeconds, clock },
    logger,
  );
  stores.push(store);
  await waitUntil(
    () =>
      store.lookup('warm-up').then(
        () => true,
        () => undefined,
      ),
    5_000,
    'the store to connect',
  );
  return store;
}

/** Loads a dump's raw bytes into a database, with the TTLs they had. */
async function load(db: Redis, dump: OsloCacheDump): Promise<void> {
  for (const entry of dump.entries) {
    const value = Buffer.from(entry.valueBase64, 'base64');
    if (entry.pttlMs > 0) {
      await db.set(entry.key, value, 'PX', entry.pttlMs);
    } else {
      await db.set(entry.key, value);
    }
  }
}

/** dogpile's creation time of an entry (`{"ct": ..., "v": 2}|...`). */
function createdAt(value: Buffer): number {
  const metadata = JSON.parse(value.subarray(0, value.indexOf(0x7c)).toString('ascii')) as { ct: number };
  return metadata.ct;
}

function tokenNamed(dump: OsloCacheDump, name: string): OsloCacheFixtureToken {
  const found = dump.tokens.find((token) => token.name === name);
  if (!found) {
    throw new Error(`no ${name} in the dump`);
  }
  return found;
}

function accessUrlBase(url: string | null): string | null {
  if (!url) {
    return null;
  }
  const parsed = new URL(url);
  return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
}

async function scanAll(
  store: LegacyTokenStore,
): Promise<{ tokens: Extract<LegacyScanEntry, { kind: 'token' }>[]; skipped: Record<string, number> }> {
  const tokens: Extract<LegacyScanEntry, { kind: 'token' }>[] = [];
  const skipped: Record<string, number> = {};
  for await (const entry of store.scan()) {
    if (entry.kind === 'token') {
      tokens.push(entry);
    } else {
      skipped[entry.reason] = (skipped[entry.reason] ?? 0) + 1;
    }
  }
  return { tokens, skipped };
}

beforeAll(async () => {
  redis = await startRedisServer();
});

afterAll(async () => {
  await Promise.all(stores.map((store) => store.close()));
  for (const created of clients) {
    created.disconnect();
  }
  await redis?.close();
});

describe('the committed fixture (bytes oslo.cache and dogpile.cache wrote for consoleauth)', () => {
  const fixture = committedOsloCacheFixture();

  it('says which versions wrote it', () => {
    expect(fixture.versions).toMatchObject({ 'oslo.cache': '3.2.0', 'dogpile.cache': '1.1.8', nova: '26.2.2' });
    expect(fixture.versions.python).toMatch(/^3\./);
    // sha1(token) hex keys, no Redis TTL (dogpile's redis_expiration_time is 0 by default).
    for (const token of fixture.tokens) {
      expect(fixture.entries.find((entry) => entry.key === osloCacheKey(token.token))).toMatchObject({ describes: token.name, pttlMs: -1 });
    }
  });

  it('serves its live tokens with every field, expiring at ct + the expiration time, and refuses the expired one', async () => {
    const db = client(1);
    await load(db, fixture);
    // The fixture's "live" entries were live when it was generated: give them an expiration time
    // that reaches today, which leaves the 2019 entry long expired.
    const expirationSeconds = Math.ceil(Date.now() / 1000 - fixture.generatedAt) + 3_600;
    const store = await openStore(1, expirationSeconds);
    const linesBefore = logs.lines.length;

    for (const name of ['live-novnc', 'live-serial', 'live-spice']) {
      const token = tokenNamed(fixture, name);
      const raw = (await db.getBuffer(osloCacheKey(token.token)))!;
      expect(await store.lookup(token.token)).toEqual({
        instanceUuid: token.instanceUuid,
        consoleType: token.consoleType,
        host: token.host,
        port: token.port,
        internalAccessPath: token.internalAccessPath,
        accessUrlBase: accessUrlBase(token.accessUrl),
        expiresAt: Math.floor(createdAt(raw) + expirationSeconds),
      });
    }
    expect(await store.lookup(tokenNamed(fixture, 'expired-novnc').token)).toBeNull();
    // An instance UUID is not a token, even though a list is stored under its sha1.
    expect(await store.lookup(fixture.instances.a)).toBeNull();
    const warnings = logs.lines.slice(linesBefore).map((line) => JSON.parse(line) as Record<string, unknown>);
    // Expiry is not a fault (no warning); the list presented as a token is.
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ field: 'value', reason: 'a per-instance token list, not a token' });

    // With consoleauth's default token_ttl (600 s): live until ct + 600, gone after, as check_token saw it.
    const novnc = tokenNamed(fixture, 'live-novnc');
    const novncCreatedAt = createdAt((await db.getBuffer(osloCacheKey(novnc.token)))!);
    const before = await openStore(1, undefined, '', { nowMs: () => (novncCreatedAt + 599) * 1000 });
    const after = await openStore(1, undefined, '', { nowMs: () => (novncCreatedAt + 601) * 1000 });
    expect(await before.lookup(novnc.token)).toMatchObject({ expiresAt: Math.floor(novncCreatedAt + 600) });
    expect(await after.lookup(novnc.token)).toBeNull();
  });

  it('scans its live tokens (the token taken from the dict) and reports the expired and the foreign entry', async () => {
    const expirationSeconds = Math.ceil(Date.now() / 1000 - fixture.generatedAt) + 3_600;
    const store = await openStore(1, expirationSeconds);
    const { tokens, skipped } = await scanAll(store);
    expect(tokens.map((entry) => entry.token).sort()).toEqual(
      ['live-novnc', 'live-serial', 'live-spice'].map((name) => tokenNamed(fixture, name).token).sort(),
    );
    for (const entry of tokens) {
      const remaining = entry.authorization.expiresAt! - Date.now() / 1000;
      expect(entry.ttlSeconds).toBeGreaterThanOrEqual(remaining - 2);
      expect(entry.ttlSeconds).toBeLessThanOrEqual(remaining + 1);
    }
    // The instance lists are consoleauth's index, not entries; the pickled dict is another cache user's.
    expect(skipped).toEqual({ expired: 1, 'not-a-token': 1 });
  });

  it('uses the Redis TTL when it ends before ct + the expiration time', async () => {
    const db = client(1);
    const token = tokenNamed(fixture, 'live-novnc');
    await db.pexpire(osloCacheKey(token.token), 5_000);
    const store = await openStore(1, Math.ceil(Date.now() / 1000 - fixture.generatedAt) + 3_600);
    const found = await store.lookup(token.token);
    expect(found?.expiresAt).toBeGreaterThanOrEqual(Math.floor(Date.now() / 1000) + 3);
    expect(found?.expiresAt).toBeLessThanOrEqual(Math.floor(Date.now() / 1000) + 6);
  });
});

describe('entries consoleauth writes now (the generator run against this Redis)', () => {
  it('are served and scanned with the default expiration time, and malformed ones are refused and reported', async () => {
    const known = { 'live-novnc': randomUUID(), 'live-serial': randomUUID(), 'live-spice': randomUUID(), 'expired-novnc': randomUUID() };
    const dump = await generateOsloCacheEntries(databaseUrl(2), { tokens: known, port: 5901 });
    expect(dump.tokens.map((token) => token.token).sort()).toEqual(Object.values(known).sort());
    const db = client(2);
    const store = await openStore(2);

    const novnc = await store.lookup(known['live-novnc']);
    expect(novnc).toMatchObject({ consoleType: 'novnc', host: '127.0.0.1', port: 5901, instanceUuid: dump.instances.a });
    expect(novnc!.expiresAt! - Date.now() / 1000).toBeGreaterThan(590);
    expect(novnc!.expiresAt! - Date.now() / 1000).toBeLessThanOrEqual(600);
    expect(await store.lookup(known['expired-novnc'])).toBeNull();

    // Broken in each layer, under sha1-hex keys: dogpile's metadata, the pickle, the JSON, the dict.
    const someToken = randomUUID();
    const good = (await db.getBuffer(osloCacheKey(known['live-spice'])))!;
    await db.set(osloCacheKey('no-metadata'), 'plain text');
    await db.set(osloCacheKey('truncated'), good.subarray(0, good.length - 3));
    await db.set(osloCacheKey(someToken), good); // a dict whose token is not the key's
    const { tokens, skipped } = await scanAll(store);
    expect(tokens.map((entry) => entry.token).sort()).toEqual([known['live-novnc'], known['live-serial'], known['live-spice']].sort());
    expect(skipped).toEqual({ expired: 1, malformed: 3, 'not-a-token': 1 });
    expect(await store.lookup(someToken)).toBeNull();
    expect(logs.text()).not.toContain(someToken);
    for (const token of Object.values(known)) {
      expect(logs.text()).not.toContain(token);
    }
  });
});

describe("keyhole's dual-write in this format", () => {
  const write = (store: LegacyTokenStore, token: string, instanceUuid: string, ttlSeconds: number, consoleType = 'novnc') =>
    store.write(
      token,
      {
        instanceUuid,
        consoleType,
        host: '192.0.2.10',
        port: 5900,
        internalAccessPath: null,
        accessUrl: `http://proxy.example:6080/vnc_auto.html?path=%3Ftoken%3D${token}`,
      },
      ttlSeconds,
    );

  it("is read by consoleauth's check_token, extends consoleauth's own per-instance list, and both delete each other's entries", async () => {
    const db = client(3);
    const store = await openStore(3);
    const instance = randomUUID();
    const other = randomUUID();
    const [byConsoleauth, first, second, third, elsewhere] = [randomUUID(), randomUUID(), randomUUID(), randomUUID(), randomUUID()];
    const before = Date.now() / 1000;

    await consoleauthRead(databaseUrl(3), {
      authorize: [
        { token: byConsoleauth, console_type: 'novnc', host: '192.0.2.11', port: 5901, instance_uuid: instance, access_url: null },
      ],
    });
    await write(store, first, instance, 600);
    await write(store, second, instance, 300, 'serial');
    await write(store, elsewhere, other, 600);

    // Redis TTL for hygiene, and ct = expiry - token_ttl, so consoleauth drops it when keyhole does.
    const secondRaw = (await db.getBuffer(osloCacheKey(second)))!;
    expect(await db.pttl(osloCacheKey(second))).toBeGreaterThan(295_000);
    expect(createdAt(secondRaw) + 600 - before).toBeGreaterThanOrEqual(299);
    expect(createdAt(secondRaw) + 600 - before).toBeLessThanOrEqual(302);

    const read = await consoleauthRead(databaseUrl(3), {
      authorize: [{ token: third, console_type: 'serial', host: '192.0.2.12', port: 5902, instance_uuid: instance, access_url: null }],
      tokens: [first, second, elsewhere, byConsoleauth, randomUUID()],
      instances: [instance, other],
    });
    expect(read.tokens[first]).toEqual({
      token: first,
      instance_uuid: instance,
      console_type: 'novnc',
      host: '192.0.2.10',
      port: 5900,
      internal_access_path: null,
      access_url: `http://proxy.example:6080/vnc_auto.html?path=%3Ftoken%3D${first}`,
      last_activity_at: expect.any(Number),
    });
    expect(Math.abs((read.tokens[first]!.last_activity_at as number) - Date.now() / 1000)).toBeLessThan(30);
    expect(read.tokens[second]).toMatchObject({ token: second, console_type: 'serial' });
    expect(read.tokens[byConsoleauth]).toMatchObject({ token: byConsoleauth, port: 5901 });
    expect(Object.values(read.tokens).filter((value) => value === null)).toHaveLength(1);
    // consoleauth kept keyhole's tokens when it pruned the list (its get_multi found them live).
    expect(read.instances[instance]).toEqual([byConsoleauth, first, second, third]);
    expect(read.instances[other]).toEqual([elsewhere]);
    // keyhole reads consoleauth's new entry too.
    expect(await store.lookup(third)).toMatchObject({ instanceUuid: instance, consoleType: 'serial', port: 5902 });

    // A token whose key is gone is pruned by keyhole's next write for the instance, as consoleauth prunes.
    const shortLived = randomUUID();
    await write(store, shortLived, instance, 1);
    await waitUntil(async () => ((await db.exists(osloCacheKey(shortLived))) === 0 ? true : undefined), 5_000, 'the 1 s token to expire');
    const last = randomUUID();
    await write(store, last, instance, 600);

    // keyhole deletes the instance's tokens, consoleauth's included; consoleauth deletes keyhole's.
    expect(await store.deleteInstance(instance)).toBe(5);
    const after = await consoleauthRead(databaseUrl(3), {
      tokens: [byConsoleauth, first, second, third, last, elsewhere],
      instances: [instance],
      deleteInstances: [other],
    });
    expect(after.tokens).toEqual({
      [byConsoleauth]: null,
      [first]: null,
      [second]: null,
      [third]: null,
      [last]: null,
      [elsewhere]: expect.objectContaining({ token: elsewhere }),
    });
    expect(after.instances[instance]).toEqual([]);
    expect(await db.exists(osloCacheKey(elsewhere), osloCacheKey(other), osloCacheKey(instance))).toBe(0);
    expect(await store.deleteInstance(randomUUID())).toBe(0);
  });

  it('loses no list entry when writes for one instance race, in one process or across three (compare-and-set)', async () => {
    const racing = [await openStore(4), await openStore(4), await openStore(4)];
    const instance = randomUUID();
    const tokens = Array.from({ length: 9 }, () => randomUUID());
    await Promise.all(tokens.map((token, index) => write(racing[index % 3], token, instance, 600)));
    const read = await consoleauthRead(databaseUrl(4), { instances: [instance] });
    expect([...read.instances[instance]].sort()).toEqual([...tokens].sort());
  });

  it('prefixes keys with KEYHOLE_LEGACY_KEY_PREFIX', async () => {
    const db = client(5);
    const store = await openStore(5, undefined, 'ns:');
    const token = randomUUID();
    const instance = randomUUID();
    await write(store, token, instance, 600);
    expect(await db.exists(`ns:${osloCacheKey(token)}`, `ns:${osloCacheKey(instance)}`)).toBe(2);
    expect(await store.lookup(token)).toMatchObject({ instanceUuid: instance });
  });
});
