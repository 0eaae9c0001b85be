import { randomBytes, randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { runKeyhole } from '../support/cli';
import { testConfig } from '../support/config';
import { RunningProxy, startConsoleProxy } from '../support/console-proxy';
import { queryDatabase } from '../support/databases';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { committedOsloCacheFixture, consoleauthRead, OsloCacheDump } from '../support/real/oslo-cache';
import { startRedisServer, TestRedisServer } from '../support/redis-server';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { Teardown } from '../support/teardown';
import { call, RunningTokenApi, startTokenApi } from '../support/token-api';
import { waitUntil } from '../support/wait';
import { connectConsole, expectRefusedUpgrade, terminateAllClients } from '../support/websocket-client';
import { sha256 } from './helpers';

/*
 * The oslo-cache-redis legacy format end to end: the committed fixture (bytes Nova consoleauth's
 * storage code wrote through oslo.cache 3.2.0 and dogpile.cache 1.1.8) loaded into a redis-server
 * of this file's own, cell1's real console proxy serving its tokens through the fallback to a TCP
 * echo console on the fixture's port, `keyhole legacy import` run in-process, and a dual-writing
 * token API whose entries Nova's own check_token reads (test/fixtures/legacy/consoleauth-read.py).
 */

jest.setTimeout(90_000);

const fixture: OsloCacheDump = committedOsloCacheFixture();
/** The fixture's live entries were live when it was generated: an expiration time reaching today. */
const EXPIRATION_SECONDS = Math.ceil(Date.now() / 1000 - fixture.generatedAt) + 3_600;

let redis: TestRedisServer;
let raw: Redis;
let deployment: TestDeployment;
/** On the port the fixture's tokens name. */
let consoleUpstream: TcpUpstream;
let proxy: RunningProxy;
const teardown = new Teardown();
const stderrChunks: string[] = [];
let stderrSpy: jest.SpyInstance;
const savedEnvironment = { ...process.env };
/** Tokens of this file that must never appear in a log line or CLI output. */
const secrets: string[] = fixture.tokens.map((token) => token.token);

function legacyEnvironment(): Record<string, string> {
  return {
    KEYHOLE_LEGACY_REDIS_URL: redis.url,
    KEYHOLE_LEGACY_FORMAT: 'oslo-cache-redis',
    KEYHOLE_LEGACY_OSLO_CACHE_EXPIRATION_SECONDS: String(EXPIRATION_SECONDS),
  };
}

function fixtureToken(name: string) {
  const found = fixture.tokens.find((token) => token.name === name);
  if (!found) {
    throw new Error(`no ${name} in the fixture`);
  }
  return found;
}

async function loadFixture(): Promise<void> {
  await raw.flushdb();
  for (const entry of fixture.entries) {
    await raw.set(entry.key, Buffer.from(entry.valueBase64, 'base64'));
  }
}

async function setFallback(enabled: boolean): Promise<void> {
  const response = await call(deployment.api.baseUrl, 'PUT', '/v1/cells/cell1/legacy-fallback', {
    key: deployment.operatorKey,
    body: { enabled },
  });
  expect(response.status).toBe(200);
  await waitUntil(() => (proxy.runtime.proxy.fallbackEnabled === enabled ? true : undefined), 2_000, 'the proxy to follow the flag');
}

/** Opens the console, echoes bytes through it and closes it. */
async function useConsole(token: string): Promise<void> {
  const client = await connectConsole(`${proxy.wsBase}/websockify?token=${encodeURIComponent(token)}`, { protocols: ['binary'] });
  const payload = randomBytes(2048);
  expect((await client.roundTrip(payload)).equals(payload)).toBe(true);
  await client.close();
}

async function refusedStatus(token: string): Promise<number> {
  return (await expectRefusedUpgrade(`${proxy.wsBase}/websockify?token=${encodeURIComponent(token)}`)).status;
}

/** Runs `keyhole ARGV` in-process as an operator would. */
async function keyhole(argv: string[], environment: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  return runKeyhole(argv, { KEYHOLE_DATABASE_URL: deployment.controlUrl, ...environment }, savedEnvironment);
}

function allLogs(): string {
  return [deployment.api.logs(), proxy.logs(), stderrChunks.join('')].join('\n');
}

beforeAll(async () => {
  stderrSpy = jest.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stderrChunks.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
    return true;
  });
  const ports = new Set(fixture.tokens.map((token) => token.port));
  expect([...ports]).toEqual([25900]);
  consoleUpstream = teardown.add(await startTcpUpstream(echo, { port: 25900 }));
  redis = teardown.add(await startRedisServer());
  raw = redis.client();
  deployment = teardown.add(await startTestDeployment(), (started) => started.stop());
  proxy = teardown.add(
    await startConsoleProxy(
      testConfig(deployment.controlUrl, {
        KEYHOLE_CELL_NAME: 'cell1',
        KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
        KEYHOLE_PROXY_INSTANCE: 'proxy-oslo-cache',
        ...legacyEnvironment(),
      }),
    ),
  );
});

afterAll(async () => {
  terminateAllClients();
  await teardown.stopAll();
  process.env = { ...savedEnvironment };
  stderrSpy?.mockRestore();
});

describe('consoleauth entries written through oslo.cache (the committed fixture)', () => {
  it('are served through the fallback (live ones), refused when expired, and imported by `keyhole legacy import`, which reports what it skipped and exits 3', async () => {
    await loadFixture();
    // One entry broken by hand under a sha1 key: dogpile metadata, then a truncated pickle.
    const broken = Buffer.from(fixture.entries.find((entry) => entry.describes === 'live-spice')!.valueBase64, 'base64');
    await raw.set(sha256('x').slice(0, 40), broken.subarray(0, broken.length - 2));
    await setFallback(true);

    for (const name of ['live-novnc', 'live-serial', 'live-spice']) {
      await useConsole(fixtureToken(name).token);
    }
    expect(await refusedStatus(fixtureToken('expired-novnc').token)).toBe(401);
    expect(await refusedStatus(fixture.instances.a)).toBe(401);
    const served = await waitUntil(
      async () => {
        const rows = await queryDatabase<{ token_source: string; token_id: string | null }>(
          deployment.cellUrls.cell1,
          'SELECT token_source, token_id FROM console_sessions',
          [],
        );
        return rows.length === 3 ? rows : undefined;
      },
      5_000,
      'three recorded sessions',
    );
    expect(served).toEqual([0, 1, 2].map(() => ({ token_source: 'legacy', token_id: null })));

    const imported = await keyhole(['legacy', 'import', '--cell', 'cell1'], legacyEnvironment());
    expect(imported).toEqual({
      code: 3,
      out: 'cell cell1: 6 legacy entries: 3 imported, 0 already present, 3 skipped (1 expired, 1 malformed, 1 not a token, 0 of an unserved console type)',
    });
    for (const name of ['live-novnc', 'live-serial', 'live-spice']) {
      const token = fixtureToken(name);
      const rows = await queryDatabase<{
        console_type: string;
        port: number;
        instance_uuid: string;
        access_url_base: string;
        expires: string;
      }>(
        deployment.cellUrls.cell1,
        'SELECT console_type, port, instance_uuid, access_url_base, expires FROM console_auth_tokens WHERE token_hash = $1',
        [sha256(token.token)],
      );
      const entry = Buffer.from(fixture.entries.find((candidate) => candidate.describes === name)!.valueBase64, 'base64');
      const createdAt = (JSON.parse(entry.subarray(0, entry.indexOf(0x7c)).toString('ascii')) as { ct: number }).ct;
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ console_type: token.consoleType, port: 25900, instance_uuid: token.instanceUuid });
      expect(rows[0].access_url_base).toBe(token.accessUrl!.slice(0, token.accessUrl!.indexOf('?')));
      // Imported with the expiry consoleauth's reader would have applied: ct + the expiration time.
      expect(Math.abs(Number(rows[0].expires) - (createdAt + EXPIRATION_SECONDS))).toBeLessThanOrEqual(2);
    }
    expect(
      await queryDatabase(deployment.cellUrls.cell1, 'SELECT 1 FROM console_auth_tokens WHERE token_hash = $1', [
        sha256(fixtureToken('expired-novnc').token),
      ]),
    ).toEqual([]);

    // Run again: nothing new, the same skips, still exit 3 (an operator must look at them).
    const again = await keyhole(['legacy', 'import', '--cell', 'cell1'], legacyEnvironment());
    expect(again.code).toBe(3);
    expect(again.out).toContain('0 imported, 3 already present, 3 skipped');

    // Without the skipped entries the import exits 0.
    await raw.del(sha256('x').slice(0, 40), fixture.entries.find((entry) => entry.describes === 'other-cache-entry')!.key);
    await raw.del(fixture.entries.find((entry) => entry.describes === 'expired-novnc')!.key);
    expect(await keyhole(['legacy', 'import', '--cell', 'cell1'], legacyEnvironment())).toEqual({
      code: 0,
      out: 'cell cell1: 3 legacy entries: 0 imported, 3 already present, 0 skipped (0 expired, 0 malformed, 0 not a token, 0 of an unserved console type)',
    });

    // The fallback can go off: the imported tokens now come from the cell database.
    await setFallback(false);
    await useConsole(fixtureToken('live-novnc').token);
    await waitUntil(
      async () => {
        const rows = await queryDatabase(deployment.cellUrls.cell1, "SELECT 1 FROM console_sessions WHERE token_source = 'database'", []);
        return rows.length === 1 ? true : undefined;
      },
      5_000,
      'a session served from the cell database',
    );

    const logs = allLogs();
    for (const secret of secrets) {
      expect(logs).not.toContain(secret);
      expect(imported.out).not.toContain(secret);
    }
  });
});

describe('dual-write in the oslo-cache-redis format', () => {
  it("writes tokens that Nova consoleauth's own check_token reads, and revoking the instance deletes them for it", async () => {
    await raw.flushdb();
    const api: RunningTokenApi = teardown.add(
      await startTokenApi(
        testConfig(deployment.controlUrl, {
          KEYHOLE_LEGACY_DUAL_WRITE: 'true',
          ...legacyEnvironment(),
          KEYHOLE_LEGACY_OSLO_CACHE_EXPIRATION_SECONDS: '600',
        }),
      ),
    );
    const instanceUuid = randomUUID();
    const issued: { token: string; accessUrl: string }[] = [];
    for (const consoleType of ['novnc', 'serial']) {
      const response = await call(api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
        key: deployment.agentKeys.cell1,
        body: { instanceUuid, consoleType, host: '127.0.0.1', port: consoleUpstream.port, ttlSeconds: 600 },
      });
      expect(response.status).toBe(201);
      issued.push(response.body);
      secrets.push(response.body.token);
    }

    const read = await consoleauthRead(redis.url, { tokens: issued.map((entry) => entry.token), instances: [instanceUuid] });
    expect(read.tokens[issued[0].token]).toEqual({
      token: issued[0].token,
      instance_uuid: instanceUuid,
      console_type: 'novnc',
      host: '127.0.0.1',
      port: consoleUpstream.port,
      internal_access_path: null,
      access_url: issued[0].accessUrl,
      last_activity_at: expect.any(Number),
    });
    expect(read.tokens[issued[1].token]).toMatchObject({ console_type: 'serial', access_url: issued[1].accessUrl });
    expect(read.instances[instanceUuid]).toEqual(issued.map((entry) => entry.token));

    const revoked = await call(api.baseUrl, 'DELETE', `/v1/cells/cell1/instances/${instanceUuid}/tokens`, {
      key: deployment.agentKeys.cell1,
    });
    expect(revoked.status).toBe(200);
    const after = await consoleauthRead(redis.url, { tokens: issued.map((entry) => entry.token), instances: [instanceUuid] });
    expect(after).toEqual({ tokens: { [issued[0].token]: null, [issued[1].token]: null }, instances: { [instanceUuid]: [] } });
    expect(api.logs()).not.toContain('could not copy the token to the legacy store');
    expect(api.logs()).not.toContain('could not delete the legacy copies');
    for (const entry of issued) {
      expect(api.logs()).not.toContain(entry.token);
    }
    await teardown.stop(api);
  });
});
