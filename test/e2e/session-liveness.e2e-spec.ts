import { randomUUID } from 'node:crypto';
import { queryDatabase } from '../support/databases';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { startPostgresServer, TestPostgresServer } from '../support/postgres-server';
import { ProxyProcess, startProxyProcess } from '../support/proxy-process';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { Teardown, stopAfterTests } from '../support/teardown';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';
import { connectConsole } from '../support/websocket-client';

/*
 * No session stays "live" in the database after it is gone: not when its proxy is killed with
 * kill -9 (the reaper ends its rows, a restart of the same proxy ends them at once), not when its
 * end was written while the cell database was frozen or down (the end is retried until it lands).
 * Real proxy processes, a real echo console, the real token API with its reaper; the frozen and
 * killed database is a PostgreSQL of the test's own.
 */

const HEARTBEAT_MS = 500;
const STALE_MS = 2_000;
const REAP_INTERVAL_MS = 250;

interface SessionListEntry {
  id: string;
  tokenId: number;
  proxyInstance: string;
  endedAt: string | null;
}

/** A deployment of cell1 (the token API with the given settings) and an echo console. */
function useDeployment(environment: Record<string, string>, teardown: Teardown, postgres?: () => TestPostgresServer) {
  const context = {} as { deployment: TestDeployment; upstream: TcpUpstream; cellUrl: string };
  beforeAll(async () => {
    context.deployment = teardown.add(await startTestDeployment({ environment, postgres: postgres?.() }), (deployment) =>
      deployment.stop(),
    );
    context.upstream = teardown.add(await startTcpUpstream(echo));
    context.cellUrl = context.deployment.cellUrls.cell1;
  }, 60_000);

  const proxy = async (name: string, extra: Record<string, string> = {}): Promise<ProxyProcess> =>
    teardown.add(
      await startProxyProcess({
        KEYHOLE_CELL_NAME: 'cell1',
        KEYHOLE_CELL_DATABASE_URL: context.cellUrl,
        KEYHOLE_PROXY_INSTANCE: name,
        KEYHOLE_PROXY_DRAIN_GRACE_MS: '0',
        ...environment,
        ...extra,
      }),
      (running) => running.stop('SIGKILL').then(() => undefined),
    );

  /** Opens a session of `consoleType` through `proxy` on its own token; resolves once it echoes. */
  const open = async (proxy: ProxyProcess, consoleType: 'novnc' | 'serial') => {
    const instanceUuid = randomUUID();
    const { body } = await call(context.deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: context.deployment.agentKeys.cell1,
      body: { instanceUuid, consoleType, host: '127.0.0.1', port: context.upstream.port },
    });
    const path = consoleType === 'serial' ? 'serial' : 'websockify';
    const client = await connectConsole(`${proxy.wsBase}/${path}?token=${body.token as string}`, { protocols: ['binary'] });
    expect((await client.roundTrip('hello')).toString()).toBe('hello');
    return { client, tokenId: body.id as number, instanceUuid };
  };

  /** The live sessions the API lists for cell1. */
  const liveList = async (): Promise<SessionListEntry[]> => {
    const response = await call(context.deployment.api.baseUrl, 'GET', '/v1/cells/cell1/sessions?live=true', {
      key: context.deployment.operatorKey,
    });
    expect(response.status).toBe(200);
    return response.body.sessions as SessionListEntry[];
  };

  /** The rows of these tokens' sessions. */
  const rows = (tokenIds: number[]) =>
    queryDatabase<{ token_id: string; ended_at: Date | null; close_reason: string | null; proxy_instance: string }>(
      context.cellUrl,
      'SELECT token_id, ended_at, close_reason, proxy_instance FROM console_sessions WHERE token_id = ANY($1::bigint[]) ORDER BY token_id',
      [tokenIds],
    );

  return { context, proxy, open, liveList, rows };
}

describe('session liveness: a proxy killed with kill -9', () => {
  const teardown = new Teardown();
  stopAfterTests(teardown);
  const { context, proxy, open, liveList, rows } = useDeployment(
    {
      KEYHOLE_PROXY_SESSION_HEARTBEAT_MS: String(HEARTBEAT_MS),
      KEYHOLE_PROXY_SESSION_STALE_MS: String(STALE_MS),
      KEYHOLE_SESSION_REAP_INTERVAL_MS: String(REAP_INTERVAL_MS),
      KEYHOLE_PURGE_INTERVAL_MS: '0',
      KEYHOLE_SESSION_RETENTION_MS: '1000',
    },
    teardown,
  );
  let survivor: ProxyProcess;
  let survivorSession: Awaited<ReturnType<typeof open>>;
  let reapedTokenIds: number[] = [];

  beforeAll(async () => {
    survivor = await proxy('liveness-survivor');
    survivorSession = await open(survivor, 'novnc');
  }, 30_000);

  jest.setTimeout(30_000);

  it("ends its VNC and serial sessions with 'proxy lost' (the reaper) and frees the serial port, within the stale time plus the reap interval", async () => {
    const killed = await proxy('liveness-killed');
    const vnc = await open(killed, 'novnc');
    const serial = await open(killed, 'serial');
    reapedTokenIds = [vnc.tokenId, serial.tokenId];
    const listed = await waitUntil(async () => {
      const live = (await liveList()).filter((session) => session.proxyInstance === 'liveness-killed');
      return live.length === 2 ? live : undefined;
    });
    expect(listed.map((session) => session.tokenId).sort()).toEqual([...reapedTokenIds].sort());

    const killedAt = Date.now();
    await teardown.stop(killed, (running) => running.stop('SIGKILL').then(() => undefined));
    const serialPortFree = async (): Promise<boolean> => {
      const response = await call(context.deployment.api.baseUrl, 'GET', `/v1/cells/cell1/instances/${serial.instanceUuid}/serial-ports`, {
        key: context.deployment.agentKeys.cell1,
      });
      return (response.body.ports as { free: boolean }[])[0].free;
    };
    expect(await serialPortFree()).toBe(false);

    const ended = await waitUntil(
      async () => {
        const found = await rows(reapedTokenIds);
        return found.every((row) => row.ended_at !== null) ? found : undefined;
      },
      STALE_MS + REAP_INTERVAL_MS + 3_000,
      "the killed proxy's rows to be ended",
      { intervalMs: 50 },
    );
    const endedAfterMs = Date.now() - killedAt;
    expect(ended.map((row) => row.close_reason)).toEqual(['proxy lost', 'proxy lost']);
    // Not before the stale time since the last heartbeat: a live proxy's rows are never taken.
    expect(endedAfterMs).toBeGreaterThanOrEqual(STALE_MS - HEARTBEAT_MS - 100);
    expect(endedAfterMs).toBeLessThanOrEqual(STALE_MS + REAP_INTERVAL_MS + 1_000);

    // The API's live list is true again: the killed proxy's sessions are gone, the survivor's stays.
    const live = await liveList();
    expect(live.filter((session) => session.proxyInstance === 'liveness-killed')).toEqual([]);
    expect(live.map((session) => session.tokenId)).toContain(survivorSession.tokenId);
    expect((await survivorSession.client.roundTrip('still here')).toString()).toBe('still here');

    // The serial port is free, for the API and for another proxy, which serves a new session on it at once.
    expect(await serialPortFree()).toBe(true);
    const claimedAt = Date.now();
    const next = await open(survivor, 'serial');
    const claimAfterMs = Date.now() - killedAt;
    expect(Date.now() - claimedAt).toBeLessThan(1_000);
    await next.client.close();

    const metrics = await scrapeMetrics(context.deployment.api.baseUrl);
    expect(metricValue(metrics, 'keyhole_sessions_reaped_total', { cell: 'cell1' })).toBe(2);
    expect(survivor.output()).not.toContain('closed sessions whose records were ended meanwhile');
    process.stdout.write(`kill -9 -> rows ended (proxy lost): ${endedAfterMs} ms; serial port claimed again: ${claimAfterMs} ms\n`);
  });

  it("closes, once it runs again, the sessions of a proxy that was frozen past the stale time and reaped (1011 'proxy lost')", async () => {
    const paused = await proxy('liveness-paused');
    const session = await open(paused, 'novnc');
    await waitUntil(async () => ((await rows([session.tokenId])).length === 1 ? true : undefined));
    paused.child.kill('SIGSTOP');
    try {
      await waitUntil(
        async () => ((await rows([session.tokenId]))[0].close_reason === 'proxy lost' ? true : undefined),
        STALE_MS + REAP_INTERVAL_MS + 3_000,
        "the frozen proxy's row to be reaped",
        { intervalMs: 50 },
      );
    } finally {
      paused.child.kill('SIGCONT');
    }
    const resumedAt = Date.now();
    // Its next heartbeat learns that the row was ended: the session goes too, the database was right.
    const closed = await session.client.waitForClose(HEARTBEAT_MS + 3_000);
    expect({ code: closed.code, reason: closed.reason }).toEqual({ code: 1011, reason: 'proxy lost' });
    expect(closed.atMs - resumedAt).toBeLessThan(HEARTBEAT_MS + 1_500);
    const metrics = await scrapeMetrics(`http://127.0.0.1:${paused.port}`);
    expect(metricValue(metrics, 'keyhole_proxy_sessions_live')).toBe(0);
    expect((await liveList()).filter((entry) => entry.proxyInstance === 'liveness-paused')).toEqual([]);
  });

  it('purges the reaped rows like any other ended session', async () => {
    expect(reapedTokenIds).toHaveLength(2);
    const live = await open(survivor, 'novnc');
    // Past the retention (1 s here) since they were ended.
    await waitUntil(
      async () => {
        const response = await call(context.deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens/purge', {
          key: context.deployment.operatorKey,
          body: {},
        });
        expect(response.status).toBe(200);
        return (await rows(reapedTokenIds)).length === 0 ? true : undefined;
      },
      5_000,
      'the purge of the reaped rows',
      { intervalMs: 250 },
    );
    // A live session is not purged.
    expect(await rows([live.tokenId])).toEqual([expect.objectContaining({ ended_at: null })]);
  });
});

describe('session liveness: a proxy restarted under its name', () => {
  const teardown = new Teardown();
  stopAfterTests(teardown);
  // No reaper here, and a stale time far off: whatever ends these rows is the restart.
  const { proxy, open, rows } = useDeployment(
    {
      KEYHOLE_PROXY_SESSION_HEARTBEAT_MS: String(HEARTBEAT_MS),
      KEYHOLE_PROXY_SESSION_STALE_MS: '60000',
      KEYHOLE_SESSION_REAP_INTERVAL_MS: '0',
      KEYHOLE_PURGE_INTERVAL_MS: '0',
    },
    teardown,
  );

  jest.setTimeout(30_000);

  it("ends the rows its killed run left live at once ('proxy restarted'), before it serves, and frees their serial port", async () => {
    const other = await proxy('restart-other');
    const otherSession = await open(other, 'novnc');
    const first = await proxy('restart-me');
    const sessions = [await open(first, 'novnc'), await open(first, 'serial')];
    await waitUntil(async () => ((await rows(sessions.map((session) => session.tokenId))).length === 2 ? true : undefined));
    const killedAt = Date.now();
    await teardown.stop(first, (running) => running.stop('SIGKILL').then(() => undefined));

    const again = await proxy('restart-me');
    const restartedAfterMs = Date.now() - killedAt;
    // Already ended when it listens: nothing to wait for.
    const ended = await rows(sessions.map((session) => session.tokenId));
    expect(ended.map((row) => [row.close_reason, row.ended_at !== null])).toEqual([
      ['proxy restarted', true],
      ['proxy restarted', true],
    ]);
    const next = await open(again, 'serial');
    await next.client.close();
    // Another proxy's live row is not touched.
    expect(await rows([otherSession.tokenId])).toEqual([expect.objectContaining({ ended_at: null })]);
    expect(again.output()).toContain('ended the sessions an earlier run of this proxy left live');
    process.stdout.write(`kill -9 -> restarted proxy listening with its earlier rows ended: ${restartedAfterMs} ms\n`);
  });

  it('never ends the rows of another running process that was given the same name', async () => {
    const running = await proxy('restart-twin');
    const session = await open(running, 'novnc');
    await waitUntil(async () => ((await rows([session.tokenId])).length === 1 ? true : undefined));
    const twin = await proxy('restart-twin');
    expect(twin.output()).toContain('another process holds this proxy name');
    expect(await rows([session.tokenId])).toEqual([expect.objectContaining({ ended_at: null, close_reason: null })]);
    expect((await session.client.roundTrip('untouched')).toString()).toBe('untouched');
  });
});

describe('session liveness: ends written while the cell database is frozen or down', () => {
  const teardown = new Teardown();
  stopAfterTests(teardown);
  let postgres: TestPostgresServer;
  beforeAll(async () => {
    postgres = teardown.add(await startPostgresServer());
  }, 60_000);
  const { proxy, open, liveList, rows } = useDeployment(
    {
      KEYHOLE_PROXY_SESSION_HEARTBEAT_MS: String(HEARTBEAT_MS),
      // Longer than the outages below: these sessions' proxy is alive, the reaper must leave them.
      KEYHOLE_PROXY_SESSION_STALE_MS: '15000',
      KEYHOLE_SESSION_REAP_INTERVAL_MS: String(REAP_INTERVAL_MS),
      KEYHOLE_PURGE_INTERVAL_MS: '0',
    },
    teardown,
    () => postgres,
  );

  jest.setTimeout(60_000);

  /** Waits until the API lists as many live sessions as the proxy says it has, and returns that count. */
  const agreeing = (proxyProcess: ProxyProcess, expected: number) =>
    waitUntil(
      async () => {
        const metric = metricValue(await scrapeMetrics(`http://127.0.0.1:${proxyProcess.port}`), 'keyhole_proxy_sessions_live');
        const listed = (await liveList()).length;
        return metric === expected && listed === expected ? listed : undefined;
      },
      15_000,
      `the API's live list and the proxy's metric to both say ${expected}`,
      { intervalMs: 100, retryErrors: true },
    );

  it('lands them once the database answers again, until the live list matches the proxy metric', async () => {
    const served = await proxy('frozen-db');
    const sessions = [await open(served, 'novnc'), await open(served, 'novnc'), await open(served, 'novnc'), await open(served, 'serial')];
    await agreeing(served, 4);

    // Frozen: the ends of a VNC and of the serial session are written into a database that does not answer.
    postgres.pause();
    try {
      await sessions[0].client.close();
      await sessions[3].client.close();
      await waitUntil(async () =>
        metricValue(await scrapeMetrics(`http://127.0.0.1:${served.port}`), 'keyhole_proxy_session_writes_pending') === 2
          ? true
          : undefined,
      );
    } finally {
      postgres.resume();
    }
    await agreeing(served, 2);
    expect((await rows([sessions[0].tokenId, sessions[3].tokenId])).map((row) => row.close_reason)).toEqual([
      'client closed',
      'client closed',
    ]);
    // The serial port is free again.
    const serialAgain = await open(served, 'serial');
    await serialAgain.client.close();
    await agreeing(served, 2);

    // Down: the end is refused, tried again with backoff, and lands once the database is back.
    await postgres.kill();
    try {
      await sessions[1].client.close();
      await waitUntil(
        async () => {
          const metrics = await scrapeMetrics(`http://127.0.0.1:${served.port}`);
          return (metricValue(metrics, 'keyhole_proxy_session_writes_retried_total') ?? 0) > 0 ? true : undefined;
        },
        10_000,
        'the proxy to retry the end',
      );
    } finally {
      await postgres.restart();
    }
    await agreeing(served, 1);
    expect((await rows([sessions[1].tokenId])).map((row) => row.close_reason)).toEqual(['client closed']);
    const metrics = await scrapeMetrics(`http://127.0.0.1:${served.port}`);
    expect(metricValue(metrics, 'keyhole_proxy_session_writes_pending')).toBe(0);
    expect(metricValue(metrics, 'keyhole_proxy_session_writes_dropped_total', { reason: 'queue_full' }) ?? 0).toBe(0);
    // The one session still open is the one the list shows, and it still works.
    expect((await liveList()).map((session) => session.tokenId)).toEqual([sessions[2].tokenId]);
    expect((await sessions[2].client.roundTrip('after the outage')).toString()).toBe('after the outage');
  });
});
