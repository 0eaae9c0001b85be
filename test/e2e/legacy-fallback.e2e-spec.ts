import { randomBytes, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Redis } from 'ioredis';
import { runKeyhole } from '../support/cli';
import { testConfig } from '../support/config';
import { RunningProxy, startConsoleProxy } from '../support/console-proxy';
import { queryDatabase, SessionRow } from '../support/databases';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { startRedisServer, TestRedisServer } from '../support/redis-server';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { Teardown } from '../support/teardown';
import { call, RunningTokenApi, startTokenApi } from '../support/token-api';
import { waitUntil } from '../support/wait';
import {
  ConsoleClient,
  ConsoleClientOptions,
  connectConsole,
  expectRefusedUpgrade,
  terminateAllClients,
} from '../support/websocket-client';
import { dumpDatabase, expectError, fingerprintOf, keyParts, sha256 } from './helpers';

/*
 * The per-cell legacy fallback end to end: a redis-server of this file's own holding tokens written
 * the way Nova consoleauth and websockify's TokenRedis wrote them (plain ioredis, nothing of
 * keyhole), the real token API and console proxies of cell1 on real PostgreSQL, a TCP echo console,
 * real websocket clients, and the operator CLI run in-process. The flag is switched while the
 * proxies run; Redis is frozen, killed and restarted under their feet.
 */

jest.setTimeout(60_000);

/** The proxies' KEYHOLE_LEGACY_TIMEOUT_MS. */
const LEGACY_TIMEOUT_MS = 250;
/** How soon a flag change must reach a running proxy. */
const FLAG_PROPAGATION_MS = 1_000;

let redis: TestRedisServer;
/** A plain Redis client: what the legacy system (Nova, websockify's operator) wrote with. */
let raw: Redis;
let deployment: TestDeployment;
let echoUpstream: TcpUpstream;
/** cell1's proxy in Nova format, following the cell's flag. */
let proxy: RunningProxy;
/** Every proxy and extra token API started by this file, to read the logs of. */
const proxies: RunningProxy[] = [];
const extraApis: RunningTokenApi[] = [];
const teardown = new Teardown();
/** Every token this file created or wrote: none may ever appear in a log line or a metric. */
const secrets: string[] = [];
/** What went to stderr (the in-process CLI logs there; Nest's logger is process-wide). */
const stderrChunks: string[] = [];
let stderrSpy: jest.SpyInstance;
const savedEnvironment = { ...process.env };

interface TokenRow extends Record<string, unknown> {
  id: string;
  token_hash: string;
  console_type: string;
  host: string;
  port: number;
  internal_access_path: string | null;
  instance_uuid: string;
  expires: string;
  access_url_base: string | null;
  issued_by: string | null;
}

beforeAll(async () => {
  stderrSpy = jest.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stderrChunks.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
    return true;
  });
  redis = teardown.add(await startRedisServer());
  raw = redis.client();
  echoUpstream = teardown.add(await startTcpUpstream(echo));
  deployment = teardown.add(await startTestDeployment(), (started) => started.stop());
  proxy = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-main' });
});

afterEach(() => {
  terminateAllClients();
  process.env = { ...savedEnvironment };
});

afterAll(async () => {
  terminateAllClients();
  await teardown.stopAll();
  process.env = { ...savedEnvironment };
  stderrSpy?.mockRestore();
});

// ---------------------------------------------------------------------------------------------
// Helpers

function proxyEnvironment(environment: Record<string, string> = {}): Record<string, string> {
  return {
    KEYHOLE_CELL_NAME: 'cell1',
    KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
    KEYHOLE_LEGACY_REDIS_URL: redis.url,
    KEYHOLE_LEGACY_TIMEOUT_MS: String(LEGACY_TIMEOUT_MS),
    ...environment,
  };
}

async function startProxy(environment: Record<string, string> = {}): Promise<RunningProxy> {
  const started = teardown.add(await startConsoleProxy(testConfig(deployment.controlUrl, proxyEnvironment(environment))));
  proxies.push(started);
  return started;
}

async function startApi(environment: Record<string, string>): Promise<RunningTokenApi> {
  const api = teardown.add(await startTokenApi(testConfig(deployment.controlUrl, environment)));
  extraApis.push(api);
  return api;
}

/** A Nova consoleauth token: a UUID4. */
function legacyToken(): string {
  const token = randomUUID();
  secrets.push(token);
  return token;
}

/**
 * The JSON Nova consoleauth stored under the raw token (nova/consoleauth/manager.py, Rocky..Stein),
 * fields in its order.
 */
function novaValue(
  token: string,
  fields: { instanceUuid: string; consoleType?: string; host?: string; port?: number; accessUrl?: string | null },
): string {
  const consoleType = fields.consoleType ?? 'novnc';
  return JSON.stringify({
    token,
    instance_uuid: fields.instanceUuid,
    console_type: consoleType,
    host: fields.host ?? '127.0.0.1',
    port: fields.port ?? echoUpstream.port,
    internal_access_path: null,
    access_url:
      fields.accessUrl !== undefined
        ? fields.accessUrl
        : consoleType === 'serial'
          ? `ws://cell1.console.test:6083/?token=${token}`
          : `http://cell1.console.test:6080/vnc_auto.html?path=%3Ftoken%3D${token}`,
    last_activity_at: Date.now() / 1000,
  });
}

/**
 * Writes a token as consoleauth did: SET token value EX ttl, then appends it to the JSON list kept
 * under the instance UUID.
 */
async function writeNovaToken(
  token: string,
  options: { instanceUuid?: string; consoleType?: string; port?: number; ttlSeconds?: number } = {},
): Promise<{ instanceUuid: string }> {
  const instanceUuid = options.instanceUuid ?? randomUUID();
  const ttlSeconds = options.ttlSeconds ?? 600;
  await raw.set(token, novaValue(token, { instanceUuid, consoleType: options.consoleType, port: options.port }), 'EX', ttlSeconds);
  const listed = JSON.parse((await raw.get(instanceUuid)) ?? '[]') as string[];
  listed.push(token);
  await raw.set(instanceUuid, JSON.stringify(listed), 'EX', ttlSeconds);
  return { instanceUuid };
}

function consoleUrl(running: RunningProxy, token: string): string {
  return `${running.wsBase}/websockify?token=${encodeURIComponent(token)}`;
}

function connect(running: RunningProxy, token: string, options: ConsoleClientOptions = {}): Promise<ConsoleClient> {
  return connectConsole(consoleUrl(running, token), { protocols: ['binary'], ...options });
}

/** The websocket, or the HTTP status the upgrade was refused with. */
async function tryConnect(running: RunningProxy, token: string, options: ConsoleClientOptions = {}): Promise<ConsoleClient | number> {
  try {
    return await connect(running, token, options);
  } catch (error) {
    const refused = /upgrade refused with HTTP (\d+)/.exec(String(error));
    if (refused) {
      return Number(refused[1]);
    }
    throw error;
  }
}

async function refusal(running: RunningProxy, token: string): Promise<{ status: number; body: string; elapsedMs: number }> {
  const started = performance.now();
  const refused = await expectRefusedUpgrade(consoleUrl(running, token));
  return { status: refused.status, body: refused.body, elapsedMs: performance.now() - started };
}

/** Bytes through the console and back, exactly. */
async function expectEcho(client: ConsoleClient): Promise<void> {
  const payload = randomBytes(4096);
  expect((await client.roundTrip(payload)).equals(payload)).toBe(true);
}

/** Connects, echoes, closes: the whole thing a user does with a console URL. */
async function useConsole(running: RunningProxy, token: string, options: ConsoleClientOptions = {}): Promise<void> {
  const client = await connect(running, token, options);
  await expectEcho(client);
  await client.close();
}

/** Tries the token until the proxy accepts it; resolves with how long that took from `sinceMs`. */
async function acceptedWithin(
  running: RunningProxy,
  token: string,
  sinceMs: number,
  timeoutMs: number,
): Promise<{ client: ConsoleClient; elapsedMs: number }> {
  let last: number | undefined;
  const client = await waitUntil(
    async () => {
      const attempt = await tryConnect(running, token);
      if (typeof attempt !== 'number') {
        return attempt;
      }
      last = attempt;
      return undefined;
    },
    sinceMs + timeoutMs - performance.now(),
    () => `the token to be accepted (still refused with HTTP ${last})`,
    { intervalMs: 20 },
  );
  return { client, elapsedMs: performance.now() - sinceMs };
}

/** Tries the token until the proxy refuses it with `status`; resolves with how long that took. */
async function refusedWithin(running: RunningProxy, token: string, status: number, sinceMs: number, timeoutMs: number): Promise<number> {
  let last: number | string = 'nothing';
  await waitUntil(
    async () => {
      const attempt = await tryConnect(running, token);
      if (attempt === status) {
        return true;
      }
      if (typeof attempt !== 'number') {
        await attempt.close();
      }
      last = typeof attempt === 'number' ? attempt : 'a websocket';
      return undefined;
    },
    sinceMs + timeoutMs - performance.now(),
    () => `the token to be refused with ${status} (got ${last})`,
    { intervalMs: 20 },
  );
  return performance.now() - sinceMs;
}

async function issueDatabaseToken(
  api: RunningTokenApi = deployment.api,
  body: Record<string, unknown> = {},
): Promise<{ id: number; token: string; instanceUuid: string; accessUrl: string; expires: number }> {
  const response = await call(api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
    key: deployment.agentKeys.cell1,
    body: { instanceUuid: randomUUID(), consoleType: 'novnc', host: '127.0.0.1', port: echoUpstream.port, ...body },
  });
  expect(response.status).toBe(201);
  secrets.push(response.body.token);
  return response.body;
}

function fallbackStatus(api: RunningTokenApi = deployment.api) {
  return call(api.baseUrl, 'GET', '/v1/cells/cell1/legacy-fallback', { key: deployment.operatorKey });
}

/** Switches cell1's flag through the API as an operator and waits until `following` proxies use it. */
async function setFallback(enabled: boolean, following: RunningProxy[] = [proxy]): Promise<void> {
  const response = await call(deployment.api.baseUrl, 'PUT', '/v1/cells/cell1/legacy-fallback', {
    key: deployment.operatorKey,
    body: { enabled },
  });
  expect(response.status).toBe(200);
  await waitForFlag(enabled, following);
}

/** Setup only (the tests themselves judge the flag by connecting): the proxies' view of the flag. */
async function waitForFlag(enabled: boolean, following: RunningProxy[]): Promise<void> {
  for (const running of following) {
    await waitUntil(
      () => (running.runtime.proxy.fallbackEnabled === enabled ? true : undefined),
      2_000,
      `the proxy to see the fallback ${enabled ? 'on' : 'off'}`,
    );
  }
}

async function sessionsOf(token: string): Promise<SessionRow[]> {
  return queryDatabase<SessionRow>(
    deployment.cellUrls.cell1,
    'SELECT * FROM console_sessions WHERE token_fingerprint = $1 ORDER BY started_at',
    [fingerprintOf(token)],
  );
}

/** The sessions of a token once `count` of them have ended and been recorded. */
async function endedSessionsOf(token: string, count: number): Promise<SessionRow[]> {
  return waitUntil(
    async () => {
      const rows = await sessionsOf(token);
      return rows.length === count && rows.every((row) => row.ended_at !== null) ? rows : undefined;
    },
    5_000,
    `${count} recorded session(s) of the token`,
  );
}

async function tokenRowsByHash(token: string): Promise<TokenRow[]> {
  // keyhole's extras (issued_by) beside the token table's columns, as keyhole reads a token.
  return queryDatabase<TokenRow>(
    deployment.cellUrls.cell1,
    'SELECT t.*, x.issued_by FROM console_auth_tokens t LEFT JOIN console_auth_token_extras x USING (token_hash) WHERE t.token_hash = $1',
    [sha256(token)],
  );
}

/** Runs `keyhole ARGV` in-process as an operator would, against this deployment's control database. */
async function keyhole(argv: string[], environment: Record<string, string> = {}): Promise<{ code: number; out: string }> {
  return runKeyhole(
    argv,
    {
      KEYHOLE_DATABASE_URL: deployment.controlUrl,
      KEYHOLE_ARGON2_MEMORY_KIB: '64',
      KEYHOLE_ARGON2_TIME_COST: '1',
      KEYHOLE_ARGON2_PARALLELISM: '1',
      ...environment,
    },
    savedEnvironment,
  );
}

/** Every log line of every app this file started, plus stderr. */
function allLogs(): string {
  return [
    deployment.api.logs(),
    ...extraApis.map((api) => api.logs()),
    ...proxies.map((running) => running.logs()),
    stderrChunks.join(''),
  ].join('\n');
}

/** The JSON log entries of every app (Nest's logger is process-wide, so a line may land in any capture). */
function logEntries(): Record<string, unknown>[] {
  return allLogs()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .flatMap((line) => {
      try {
        return [JSON.parse(line) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
}

function expectNoSecretInLogs(): void {
  const text = allLogs();
  for (const secret of secrets) {
    expect(text).not.toContain(secret);
  }
}

/** How a test with a proxy of its own ends: that proxy stops, the flag goes back off, and no secret was logged. */
async function stopProxyAndSwitchOff(running: RunningProxy): Promise<void> {
  await teardown.stop(running);
  await setFallback(false);
  expectNoSecretInLogs();
}

async function redisInfo(section: string): Promise<Record<string, string>> {
  const text = await raw.info(section);
  return Object.fromEntries(
    text
      .split('\r\n')
      .filter((line) => line.includes(':') && !line.startsWith('#'))
      .map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1)]),
  );
}

/** `cmdstat_NAME` of INFO commandstats as numbers (calls, failed_calls...); empty when never called. */
async function commandStats(name: string): Promise<Record<string, number>> {
  const line = (await redisInfo('commandstats'))[`cmdstat_${name}`];
  if (!line) {
    return {};
  }
  return Object.fromEntries(
    line
      .split(',')
      .map((pair) => pair.split('='))
      .map(([key, value]) => [key, Number(value)]),
  );
}

/** total_commands_processed once nothing but this probe talks to Redis (each INFO adds one). */
async function quietCommandCount(): Promise<number> {
  let previous = Number((await redisInfo('stats')).total_commands_processed);
  return waitUntil(
    async () => {
      const current = Number((await redisInfo('stats')).total_commands_processed);
      const quiet = current === previous + 1;
      previous = current;
      return quiet ? current : undefined;
    },
    3_000,
    'Redis to be quiet',
  );
}

// ---------------------------------------------------------------------------------------------

describe('legacy fallback off (the default)', () => {
  it('refuses a token that only the legacy store knows without asking Redis, and serves database tokens', async () => {
    const legacy = legacyToken();
    await writeNovaToken(legacy);
    const database = await issueDatabaseToken();
    const status = await fallbackStatus();
    expect(status.status).toBe(200);
    expect(status.body).toMatchObject({ cell: 'cell1', enabled: false, forced: false, flag: null, history: [], legacySessionsLast24h: 0 });

    const hitsBefore = await redisInfo('stats');
    const getrangeBefore = await commandStats('getrange');
    const before = await quietCommandCount();
    const refused = await refusal(proxy, legacy);
    await useConsole(proxy, database.token);
    const after = Number((await redisInfo('stats')).total_commands_processed);

    expect(refused.status).toBe(401);
    expect(JSON.parse(refused.body)).toEqual({ code: 'INVALID_TOKEN', message: 'invalid or expired token' });
    // Only this probe's own INFO: neither the refused nor the served connect reached Redis.
    expect(after - before).toBe(1);
    const hitsAfter = await redisInfo('stats');
    expect([hitsAfter.keyspace_hits, hitsAfter.keyspace_misses]).toEqual([hitsBefore.keyspace_hits, hitsBefore.keyspace_misses]);
    expect(await commandStats('getrange')).toEqual(getrangeBefore);
    expect(await sessionsOf(legacy)).toEqual([]);
    expect((await endedSessionsOf(database.token, 1))[0]).toMatchObject({ token_source: 'database', token_id: String(database.id) });
    expectNoSecretInLogs();
  });
});

describe('switching the fallback while the proxy runs', () => {
  it('serves legacy tokens within a second of an operator switching it on through the API, and refuses them within a second of the CLI switching it off', async () => {
    const legacy = legacyToken();
    const { instanceUuid } = await writeNovaToken(legacy);
    expect((await refusal(proxy, legacy)).status).toBe(401);

    const switched = await call(deployment.api.baseUrl, 'PUT', '/v1/cells/cell1/legacy-fallback', {
      key: deployment.operatorKey,
      body: { enabled: true },
    });
    const switchedAt = performance.now();
    expect(switched.status).toBe(200);
    const operatorName = `credential ${keyParts(deployment.operatorKey).id} (operator)`;
    expect(switched.body).toMatchObject({ cell: 'cell1', enabled: true, forced: false, flag: { enabled: true, changedBy: operatorName } });

    const { client, elapsedMs } = await acceptedWithin(proxy, legacy, switchedAt, FLAG_PROPAGATION_MS);
    expect(elapsedMs).toBeLessThan(FLAG_PROPAGATION_MS);
    await expectEcho(client);

    // Operators see the live legacy session (its record is written within 20 ms) and can end it like any other.
    const live = await waitUntil(
      async () => {
        const listed = await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/sessions?instanceUuid=${instanceUuid}`, {
          key: deployment.operatorKey,
        });
        expect(listed.status).toBe(200);
        return listed.body.sessions.length > 0 ? listed : undefined;
      },
      2_000,
      'the session in the list',
    );
    expect(live.body.sessions).toEqual([
      expect.objectContaining({
        tokenSource: 'legacy',
        tokenId: null,
        fingerprint: fingerprintOf(legacy),
        instanceUuid,
        consoleType: 'novnc',
        endedAt: null,
      }),
    ]);
    const ended = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/sessions/${live.body.sessions[0].id}`, {
      key: deployment.operatorKey,
    });
    expect(ended.status).toBe(204);
    expect((await client.waitForClose(FLAG_PROPAGATION_MS + 500)).code).toBe(1008);
    // The API marks the end at once; the proxy adds the byte counts when it has closed the session.
    const session = await waitUntil(
      async () => (await sessionsOf(legacy)).find((row) => row.bytes_to_client !== '0'),
      5_000,
      'the proxy to record the byte counts',
    );
    expect(await sessionsOf(legacy)).toHaveLength(1);
    expect(session).toMatchObject({
      token_source: 'legacy',
      token_id: null,
      instance_uuid: instanceUuid,
      console_type: 'novnc',
      host: '127.0.0.1',
      port: echoUpstream.port,
      proxy_instance: 'proxy-main',
      close_reason: 'ended by operator',
      bytes_to_client: '4096',
      bytes_to_upstream: '4096',
    });

    // Database tokens are unaffected, and are still recorded as such.
    const database = await issueDatabaseToken();
    await useConsole(proxy, database.token);
    expect((await endedSessionsOf(database.token, 1))[0]).toMatchObject({ token_source: 'database', token_id: String(database.id) });

    const status = await fallbackStatus();
    expect(status.status).toBe(200);
    expect(status.body).toEqual({
      cell: 'cell1',
      enabled: true,
      forced: false,
      flag: { enabled: true, changedBy: operatorName, changedAt: expect.any(String) },
      history: [{ enabled: true, changedBy: operatorName, changedAt: status.body.flag.changedAt }],
      legacySessionsLast24h: 1,
    });
    expect(Math.abs(Date.parse(status.body.flag.changedAt) - Date.now())).toBeLessThan(60_000);

    const off = await keyhole(['fallback', 'off', '--cell', 'cell1']);
    const offAt = performance.now();
    expect(off.code).toBe(0);
    expect(off.out).toMatch(/^cell cell1: legacy fallback off \(set off by cli \S+ at \S+\); 1 legacy session\(s\) in the last 24 h$/);
    expect(await refusedWithin(proxy, legacy, 401, offAt, FLAG_PROPAGATION_MS)).toBeLessThan(FLAG_PROPAGATION_MS);
    await useConsole(proxy, database.token);

    const after = await fallbackStatus();
    expect(after.body).toMatchObject({ enabled: false, flag: { enabled: false, changedBy: expect.stringMatching(/^cli /) } });
    expect(
      after.body.history.map((entry: { enabled: boolean; changedBy: string }) => [
        entry.enabled,
        entry.changedBy.startsWith('cli ') ? 'cli' : entry.changedBy,
      ]),
    ).toEqual([
      [false, 'cli'],
      [true, operatorName],
    ]);
    expectNoSecretInLogs();
  });
});

describe('legacy tokens follow the rules of database tokens', () => {
  it('checks the page origin against the legacy access URL and serves a legacy serial console to one client at a time', async () => {
    await setFallback(true);
    const vnc = legacyToken();
    await writeNovaToken(vnc);
    // Its access URL is http://cell1.console.test:6080/...: a page of that host over http may use it.
    const allowed = { origin: 'http://cell1.console.test:6080', headers: { Host: 'cell1.console.test:6080' } };
    await useConsole(proxy, vnc, allowed);
    expect(
      (
        await expectRefusedUpgrade(consoleUrl(proxy, vnc), {
          origin: 'https://cell1.console.test',
          headers: { Host: 'cell1.console.test:6080' },
        })
      ).status,
    ).toBe(403);
    expect(
      (await expectRefusedUpgrade(consoleUrl(proxy, vnc), { origin: 'http://evil.example', headers: { Host: 'cell1.console.test:6080' } }))
        .status,
    ).toBe(403);

    const serial = legacyToken();
    await writeNovaToken(serial, { consoleType: 'serial' });
    const first = await connect(proxy, serial);
    await expectEcho(first);
    const busy = await refusal(proxy, serial);
    expect(busy.status).toBe(409);
    expect(JSON.parse(busy.body)).toMatchObject({ code: 'CONSOLE_BUSY', message: expect.stringMatching(/^console busy/) });
    await first.close();
    await endedSessionsOf(serial, 1);
    await useConsole(proxy, serial);
    expect((await endedSessionsOf(serial, 2)).map((row) => [row.token_source, row.console_type])).toEqual([
      ['legacy', 'serial'],
      ['legacy', 'serial'],
    ]);

    await setFallback(false);
    expectNoSecretInLogs();
  });
});

describe('websockify TokenRedis format', () => {
  it('serves `ns:TOKEN` keys holding {"host": "HOST:PORT"} or plain HOST:PORT, with the page origin checked against the request host', async () => {
    await setFallback(true);
    const websockify = await startProxy({
      KEYHOLE_PROXY_INSTANCE: 'proxy-websockify',
      KEYHOLE_LEGACY_FORMAT: 'websockify',
      KEYHOLE_LEGACY_KEY_PREFIX: 'ns:',
    });
    await waitForFlag(true, [websockify]);
    const jsonForm = legacyToken();
    const plainForm = legacyToken();
    // What an operator of websockify's TokenRedis plugin writes.
    await raw.set(`ns:${jsonForm}`, JSON.stringify({ host: `127.0.0.1:${echoUpstream.port}` }), 'EX', 600);
    await raw.set(`ns:${plainForm}`, `127.0.0.1:${echoUpstream.port}`);

    const sameOrigin = `http://127.0.0.1:${websockify.port}`;
    for (const token of [jsonForm, plainForm]) {
      await useConsole(websockify, token, { origin: sameOrigin });
      // No Origin (not a browser): no origin check.
      await useConsole(websockify, token);
      const rows = await endedSessionsOf(token, 2);
      for (const row of rows) {
        expect(row).toMatchObject({
          token_source: 'legacy',
          token_id: null,
          console_type: 'novnc',
          host: '127.0.0.1',
          port: echoUpstream.port,
          proxy_instance: 'proxy-websockify',
        });
      }
    }
    // A page from elsewhere, or loaded over https, may not use it (cross-site websocket hijacking).
    expect((await expectRefusedUpgrade(consoleUrl(websockify, jsonForm), { origin: 'http://evil.example' })).status).toBe(403);
    expect((await expectRefusedUpgrade(consoleUrl(websockify, jsonForm), { origin: `https://127.0.0.1:${websockify.port}` })).status).toBe(
      403,
    );
    // The namespace is part of the key: the Nova-format proxy without prefix does not see these.
    expect((await refusal(proxy, jsonForm)).status).toBe(401);
    expect((await refusal(websockify, `ns:${jsonForm}`)).status).toBe(401);

    await stopProxyAndSwitchOff(websockify);
  });
});

describe('fallback forced by configuration', () => {
  it('reports forced:true and refuses changes with FALLBACK_FORCED; a proxy forced on serves legacy tokens while the flag is off, one forced off never does', async () => {
    await setFallback(false);
    const historyBefore = (await fallbackStatus()).body.history;
    const forcedApi = await startApi({ KEYHOLE_LEGACY_FALLBACK: 'on', KEYHOLE_LEGACY_REDIS_URL: redis.url });

    const status = await fallbackStatus(forcedApi);
    expect(status.status).toBe(200);
    expect(status.body).toMatchObject({ cell: 'cell1', enabled: true, forced: true, flag: { enabled: false } });
    for (const enabled of [false, true]) {
      const refused = await call(forcedApi.baseUrl, 'PUT', '/v1/cells/cell1/legacy-fallback', {
        key: deployment.operatorKey,
        body: { enabled },
      });
      expectError(refused, 409, 'FALLBACK_FORCED');
    }
    // Nothing was stored; the API that is not forced still shows the stored flag.
    expect((await fallbackStatus()).body).toMatchObject({ enabled: false, forced: false, history: historyBefore });

    const legacy = legacyToken();
    await writeNovaToken(legacy);
    const forcedOn = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-forced-on', KEYHOLE_LEGACY_FALLBACK: 'on' });
    const forcedOff = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-forced-off', KEYHOLE_LEGACY_FALLBACK: 'off' });
    await useConsole(forcedOn, legacy);
    expect((await endedSessionsOf(legacy, 1))[0]).toMatchObject({ token_source: 'legacy', proxy_instance: 'proxy-forced-on' });
    expect((await refusal(proxy, legacy)).status).toBe(401);
    expect((await refusal(forcedOff, legacy)).status).toBe(401);

    // The flag switched on: the proxy that follows it serves the token, the one forced off does not.
    await setFallback(true);
    await useConsole(proxy, legacy);
    expect((await refusal(forcedOff, legacy)).status).toBe(401);
    await useConsole(forcedOn, legacy);

    await setFallback(false);
    await teardown.stop(forcedOn);
    await teardown.stop(forcedOff);
    await teardown.stop(forcedApi);
    expectNoSecretInLogs();
  });
});

describe('dual-write for a rolling upgrade', () => {
  it('writes issued tokens to Redis in Nova format with their TTL and instance list, and deletes them when the instance is revoked', async () => {
    const dualApi = await startApi({ KEYHOLE_LEGACY_DUAL_WRITE: 'true', KEYHOLE_LEGACY_REDIS_URL: redis.url });
    const instanceUuid = randomUUID();
    const first = await issueDatabaseToken(dualApi, { instanceUuid, ttlSeconds: 600 });
    const second = await issueDatabaseToken(dualApi, { instanceUuid, ttlSeconds: 300, consoleType: 'serial' });

    for (const [issued, ttlSeconds, consoleType] of [
      [first, 600, 'novnc'],
      [second, 300, 'serial'],
    ] as const) {
      const stored = await raw.get(issued.token);
      expect(stored).not.toBeNull();
      const parsed = JSON.parse(stored!) as Record<string, unknown>;
      expect(typeof parsed.last_activity_at).toBe('number');
      expect(Math.abs((parsed.last_activity_at as number) - Date.now() / 1000)).toBeLessThan(30);
      // The exact bytes an old consoleauth-reading proxy gets: consoleauth's fields, in its order.
      expect(stored).toBe(
        JSON.stringify({
          token: issued.token,
          instance_uuid: instanceUuid,
          console_type: consoleType,
          host: '127.0.0.1',
          port: echoUpstream.port,
          internal_access_path: null,
          access_url: issued.accessUrl,
          last_activity_at: parsed.last_activity_at,
        }),
      );
      const ttlMs = await raw.pttl(issued.token);
      expect(ttlMs).toBeLessThanOrEqual(ttlSeconds * 1000);
      expect(ttlMs).toBeGreaterThan((ttlSeconds - 5) * 1000);
    }
    expect(JSON.parse((await raw.get(instanceUuid)) ?? 'null')).toEqual([first.token, second.token]);
    expect(await raw.pttl(instanceUuid)).toBeGreaterThan(595_000);
    expect(allLogs()).not.toContain('could not copy the token to the legacy store');

    // Revoked: gone from the cell database and from Redis, so the fallback cannot bring them back.
    await setFallback(true);
    const revoked = await call(dualApi.baseUrl, 'DELETE', `/v1/cells/cell1/instances/${instanceUuid}/tokens`, {
      key: deployment.agentKeys.cell1,
    });
    expect(revoked.status).toBe(200);
    expect(revoked.body).toEqual({ revoked: 2, ids: expect.arrayContaining([first.id, second.id]) });
    expect(await raw.exists(first.token, second.token, instanceUuid)).toBe(0);
    expect((await refusal(proxy, first.token)).status).toBe(401);
    expect((await refusal(proxy, second.token)).status).toBe(401);

    // An instance without legacy tokens: no failed DEL, no error reply (Nova bug 1794812).
    const errorsBefore = (await redisInfo('stats')).total_error_replies;
    const delBefore = await commandStats('del');
    const empty = await call(dualApi.baseUrl, 'DELETE', `/v1/cells/cell1/instances/${randomUUID()}/tokens`, {
      key: deployment.agentKeys.cell1,
    });
    expect(empty.status).toBe(200);
    expect(empty.body).toEqual({ revoked: 0, ids: [] });
    expect((await redisInfo('stats')).total_error_replies).toBe(errorsBefore);
    const delAfter = await commandStats('del');
    expect([delAfter.failed_calls ?? 0, delAfter.rejected_calls ?? 0]).toEqual([
      delBefore.failed_calls ?? 0,
      delBefore.rejected_calls ?? 0,
    ]);
    expect(allLogs()).not.toContain('could not delete the legacy copies');

    await setFallback(false);
    await teardown.stop(dualApi);
    expectNoSecretInLogs();
  });

  it('does not bring a token revoked by id back through the fallback from its dual-written copy', async () => {
    // The rolling-upgrade configuration: the API dual-writes for old proxies, new proxies fall back.
    const dualApi = await startApi({ KEYHOLE_LEGACY_DUAL_WRITE: 'true', KEYHOLE_LEGACY_REDIS_URL: redis.url });
    await setFallback(true);
    const issued = await issueDatabaseToken(dualApi, { ttlSeconds: 600 });
    expect(await raw.exists(issued.token)).toBe(1);
    await useConsole(proxy, issued.token);

    const revoked = await call(dualApi.baseUrl, 'DELETE', `/v1/cells/cell1/tokens/${issued.id}`, { key: deployment.agentKeys.cell1 });
    expect(revoked.status).toBe(204);
    try {
      // Revoked means refused, like an unknown token: not served again from the legacy copy.
      expect((await refusal(proxy, issued.token)).status).toBe(401);
    } finally {
      await raw.del(issued.token);
      await setFallback(false);
      await teardown.stop(dualApi);
    }
    expectNoSecretInLogs();
  });
});

describe('revoking an instance', () => {
  it('ends its live sessions that came from the legacy store (they have no token id) within a second', async () => {
    await raw.flushdb();
    await setFallback(true);
    const legacy = legacyToken();
    const { instanceUuid } = await writeNovaToken(legacy, { ttlSeconds: 600 });
    const client = await connect(proxy, legacy);
    await expectEcho(client);
    const revokedAt = performance.now();
    const revoked = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/instances/${instanceUuid}/tokens`, {
      key: deployment.agentKeys.cell1,
    });
    expect(revoked.status).toBe(200);
    const closed = await client.waitForClose(2_000);
    expect({ code: closed.code, reason: closed.reason }).toEqual({ code: 1008, reason: 'token revoked' });
    expect(performance.now() - revokedAt).toBeLessThan(1_000);
    await setFallback(false);
  });
});

describe('keyhole legacy import', () => {
  it('moves live legacy tokens into the cell database hashed with their expiry, idempotently, so the fallback can go off without breaking a console URL', async () => {
    await raw.flushdb();
    await setFallback(true);
    const vnc = legacyToken();
    const serial = legacyToken();
    const unserved = legacyToken();
    const { instanceUuid: vncInstance } = await writeNovaToken(vnc, { ttlSeconds: 900 });
    const { instanceUuid: serialInstance } = await writeNovaToken(serial, { ttlSeconds: 1800, consoleType: 'serial' });
    await writeNovaToken(unserved, { ttlSeconds: 600, consoleType: 'rdp-html5' });
    // Served from Redis before the import.
    await useConsole(proxy, vnc);
    expect((await endedSessionsOf(vnc, 1))[0]).toMatchObject({ token_source: 'legacy', token_id: null });

    const environment = { KEYHOLE_LEGACY_REDIS_URL: redis.url };
    const importedAt = Math.floor(Date.now() / 1000);
    const first = await keyhole(['legacy', 'import', '--cell', 'cell1'], environment);
    // Exit 3: done, but an entry (the unserved type) did not come across.
    expect(first).toEqual({
      code: 3,
      out: 'cell cell1: 3 legacy entries: 2 imported, 0 already present, 1 skipped (0 expired, 0 malformed, 0 not a token, 1 of an unserved console type)',
    });

    const [vncRow] = await tokenRowsByHash(vnc);
    const [serialRow] = await tokenRowsByHash(serial);
    expect(vncRow).toMatchObject({
      token_hash: sha256(vnc),
      console_type: 'novnc',
      host: '127.0.0.1',
      port: echoUpstream.port,
      internal_access_path: null,
      instance_uuid: vncInstance,
      access_url_base: 'http://cell1.console.test:6080/vnc_auto.html',
      issued_by: null,
    });
    expect(serialRow).toMatchObject({
      console_type: 'serial',
      instance_uuid: serialInstance,
      access_url_base: 'ws://cell1.console.test:6083/',
    });
    expect(Number(vncRow.expires) - importedAt).toBeGreaterThanOrEqual(895);
    expect(Number(vncRow.expires) - importedAt).toBeLessThanOrEqual(901);
    expect(Number(serialRow.expires) - importedAt).toBeGreaterThanOrEqual(1795);
    expect(Number(serialRow.expires) - importedAt).toBeLessThanOrEqual(1801);
    expect(await tokenRowsByHash(unserved)).toEqual([]);
    const dump = JSON.stringify(await dumpDatabase(deployment.cellUrls.cell1));
    for (const token of [vnc, serial, unserved]) {
      expect(dump).not.toContain(token);
    }

    const again = await keyhole(['legacy', 'import', '--cell', 'cell1'], environment);
    expect(again).toEqual({
      code: 3,
      out: 'cell cell1: 3 legacy entries: 0 imported, 2 already present, 1 skipped (0 expired, 0 malformed, 0 not a token, 1 of an unserved console type)',
    });
    expect(await tokenRowsByHash(vnc)).toHaveLength(1);

    const off = await keyhole(['fallback', 'off', '--cell', 'cell1']);
    expect(off.code).toBe(0);
    await waitForFlag(false, [proxy]);
    await useConsole(proxy, vnc);
    await useConsole(proxy, serial);
    const vncSessions = await endedSessionsOf(vnc, 2);
    expect(vncSessions[1]).toMatchObject({ token_source: 'database', token_id: vncRow.id });
    expect((await endedSessionsOf(serial, 1))[0]).toMatchObject({ token_source: 'database', token_id: serialRow.id });
    expect((await refusal(proxy, unserved)).status).toBe(401);
    expectNoSecretInLogs();
  });
});

describe('a legacy store that stops answering', () => {
  it('keeps database tokens fast, refuses legacy tokens with 503 within about the timeout, and serves them again once Redis is back', async () => {
    const outage = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-outage' });
    await setFallback(true, [proxy, outage]);
    const database = await issueDatabaseToken();
    const legacy = legacyToken();
    const { instanceUuid } = await writeNovaToken(legacy);
    await useConsole(outage, database.token);
    await useConsole(outage, legacy);

    // Frozen: connections stay open and nothing answers (the command timeout decides).
    redis.pause();
    try {
      for (let attempt = 0; attempt < 3; attempt += 1) {
        const started = performance.now();
        const client = await connect(outage, database.token);
        const connectMs = performance.now() - started;
        // The database answered: Redis is not asked, its timeout not waited for.
        expect(connectMs).toBeLessThan(150);
        await expectEcho(client);
        await client.close();
      }
      const frozen = await refusal(outage, legacy);
      expect(frozen.status).toBe(503);
      expect(JSON.parse(frozen.body)).toEqual({ code: 'UNAVAILABLE', message: 'console authorization is unavailable' });
      expect(frozen.elapsedMs).toBeLessThan(LEGACY_TIMEOUT_MS + 500);
    } finally {
      redis.resume();
    }

    // Killed: the connection is gone; legacy tokens are refused at once, database ones still served.
    await redis.kill();
    const killed = await refusal(outage, legacy);
    expect(killed.status).toBe(503);
    expect(killed.elapsedMs).toBeLessThan(LEGACY_TIMEOUT_MS + 500);
    const started = performance.now();
    const client = await connect(outage, database.token);
    expect(performance.now() - started).toBeLessThan(150);
    await expectEcho(client);
    await client.close();

    const failures = logEntries().filter((entry) => entry.msg === 'token lookup failed' && entry.fingerprint === fingerprintOf(legacy));
    expect(failures.length).toBeGreaterThanOrEqual(2);
    expect(JSON.stringify(failures)).toMatch(/legacy token store did not answer/);
    await waitUntil(() => logEntries().find((entry) => entry.msg === 'legacy token store unreachable'), 2_000, 'the outage to be logged');

    // Back on the same port (empty: nothing was saved); the legacy system writes the token again.
    await redis.restart();
    const restartedAt = performance.now();
    raw = redis.client();
    await raw.set(legacy, novaValue(legacy, { instanceUuid }), 'EX', 600);
    const { client: back, elapsedMs } = await acceptedWithin(outage, legacy, restartedAt, 5_000);
    expect(elapsedMs).toBeLessThan(5_000);
    await expectEcho(back);
    await back.close();
    const sessions = await endedSessionsOf(legacy, 2);
    expect(sessions.map((row) => row.token_source)).toEqual(['legacy', 'legacy']);

    await stopProxyAndSwitchOff(outage);
  });
});

describe('malformed legacy values', () => {
  it('refuses each with 401, logs its fingerprint and never the token, and keeps serving valid tokens', async () => {
    const checked = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-malformed' });
    await setFallback(true, [proxy, checked]);
    const instanceUuid = randomUUID();
    const valid = legacyToken();
    await writeNovaToken(valid, { instanceUuid });

    const cases: { name: string; field: string; reason: string; value: (token: string) => string }[] = [
      { name: 'not JSON', field: 'value', reason: 'not JSON', value: () => `host: 127.0.0.1 port: ${echoUpstream.port}` },
      { name: 'port 0', field: 'port', reason: 'not an integer 1..65535', value: (token) => novaValue(token, { instanceUuid, port: 0 }) },
      {
        name: 'no host',
        field: 'host',
        reason: 'not a hostname or IP address',
        value: (token) => {
          const { host: _host, ...rest } = JSON.parse(novaValue(token, { instanceUuid })) as Record<string, unknown>;
          return JSON.stringify(rest);
        },
      },
      {
        name: 'a 100 KiB value',
        field: 'value',
        // Refused for its size, not parsed (and not read whole: GETRANGE stops after 64 KiB).
        reason: 'larger than 64 KiB',
        value: (token) =>
          JSON.stringify({ ...(JSON.parse(novaValue(token, { instanceUuid })) as object), padding: 'x'.repeat(100 * 1024) }),
      },
    ];
    for (const { name, field, reason, value } of cases) {
      const token = legacyToken();
      await raw.set(token, value(token), 'EX', 600);
      const refused = await refusal(checked, token);
      expect({ name, status: refused.status }).toEqual({ name, status: 401 });
      const warned = await waitUntil(
        () =>
          logEntries().find(
            (entry) => entry.msg === 'legacy token value is malformed; ignored' && entry.fingerprint === fingerprintOf(token),
          ),
        2_000,
        `the warning about ${name}`,
      );
      expect({ name, field: warned.field, reason: warned.reason, format: warned.format }).toEqual({ name, field, reason, format: 'nova' });
      // Still up and serving the next valid token.
      await useConsole(checked, valid);
    }
    const health = await fetch(`${checked.httpBase}/healthz`);
    expect(health.status).toBe(200);
    expect((await endedSessionsOf(valid, cases.length)).every((row) => row.token_source === 'legacy')).toBe(true);

    await stopProxyAndSwitchOff(checked);
  });
});

describe('metrics', () => {
  it('counts legacy lookups by result (served, miss, unavailable), and nothing while off or for database tokens', async () => {
    const measured = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-metrics' });
    await waitForFlag(false, [measured]);
    const legacy = legacyToken();
    await writeNovaToken(legacy);
    const malformed = legacyToken();
    await raw.set(malformed, 'not json', 'EX', 600);
    const unknown = legacyToken();
    const database = await issueDatabaseToken();

    // Off: no lookup at all.
    expect((await refusal(measured, legacy)).status).toBe(401);
    let text = await scrapeMetrics(measured.httpBase);
    expect(metricValue(text, 'keyhole_proxy_legacy_lookups_total')).toBeUndefined();

    await setFallback(true, [proxy, measured]);
    await useConsole(measured, legacy);
    await useConsole(measured, legacy);
    await useConsole(measured, database.token);
    expect((await refusal(measured, unknown)).status).toBe(401);
    expect((await refusal(measured, malformed)).status).toBe(401);
    await redis.kill();
    try {
      expect((await refusal(measured, legacy)).status).toBe(503);
      // A database token never asks the legacy store, even while it is down.
      await useConsole(measured, database.token);
    } finally {
      await redis.restart();
    }
    const restartedAt = performance.now();
    raw = redis.client();

    text = await scrapeMetrics(measured.httpBase);
    const lookups = (result: string) => metricValue(text, 'keyhole_proxy_legacy_lookups_total', { cell: 'cell1', result }) ?? 0;
    expect({ served: lookups('served'), miss: lookups('miss'), unavailable: lookups('unavailable') }).toEqual({
      served: 2,
      miss: 2,
      unavailable: 1,
    });
    expect(metricValue(text, 'keyhole_proxy_connects_total', { result: 'accepted' })).toBe(4);
    expect(metricValue(text, 'keyhole_proxy_connects_total', { result: 'invalid_token' })).toBe(3);
    expect(metricValue(text, 'keyhole_proxy_connects_total', { result: 'unavailable' })).toBe(1);
    for (const secret of [legacy, malformed, unknown, database.token]) {
      expect(text).not.toContain(secret);
      expect(text).not.toContain(fingerprintOf(secret));
    }

    // Redis is back (empty): the legacy system writes the token again and both proxies serve it,
    // without a restart (and their connections are open again when they close).
    await raw.set(legacy, novaValue(legacy, { instanceUuid: randomUUID() }), 'EX', 600);
    for (const running of [measured, proxy]) {
      const { client } = await acceptedWithin(running, legacy, restartedAt, 5_000);
      await client.close();
    }
    await stopProxyAndSwitchOff(measured);
  });
});
