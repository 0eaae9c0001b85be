import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { queryDatabase } from '../support/databases';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { ProxyProcess, startProxyProcess } from '../support/proxy-process';
import { call } from '../support/token-api';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { waitUntil } from '../support/wait';
import { CloseEvent, expectPolicyClose } from '../support/websocket-client';

const INSTANCE = '7d4f0a2e-5b6c-4d8e-9f01-23456789abcd';

/** Opens a websocket; resolves with it once open, or with the HTTP status of a refused upgrade. */
function connect(url: string): Promise<{ ws?: WebSocket; status?: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ['binary']);
    ws.once('open', () => resolve({ ws }));
    ws.once('unexpected-response', (_request, response) => {
      resolve({ status: response.statusCode });
      ws.terminate();
    });
    ws.once('error', reject);
  });
}

function closed(ws: WebSocket): Promise<CloseEvent> {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString(), atMs: Date.now() })));
}

async function echoes(ws: WebSocket, text: string): Promise<boolean> {
  const answer = new Promise<string>((resolve) => ws.once('message', (data) => resolve((data as Buffer).toString())));
  ws.send(Buffer.from(text));
  return (await answer) === text;
}

/**
 * Two console proxy processes of the same cell, as two replicas run in production: they share
 * only the cell database, and must still agree on exclusive serial ports and both end sessions
 * within a second of a revocation.
 */
describe('console proxy replicas (separate processes)', () => {
  let deployment: TestDeployment;
  let upstream: TcpUpstream;
  let replicas: ProxyProcess[] = [];

  beforeAll(async () => {
    deployment = await startTestDeployment();
    upstream = await startTcpUpstream(echo);
    const environment = {
      KEYHOLE_CELL_NAME: 'cell1',
      KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
      KEYHOLE_PROXY_DRAIN_GRACE_MS: '1500',
      KEYHOLE_PROXY_SESSION_HEARTBEAT_MS: '500',
      KEYHOLE_PROXY_SESSION_STALE_MS: '2000',
    };
    replicas = await Promise.all([
      startProxyProcess({ ...environment, KEYHOLE_PROXY_INSTANCE: 'replica-a' }),
      startProxyProcess({ ...environment, KEYHOLE_PROXY_INSTANCE: 'replica-b' }),
    ]);
  }, 60_000);

  afterAll(async () => {
    await Promise.all(replicas.map((replica) => replica.stop('SIGKILL')));
    await upstream?.close();
    await deployment?.stop();
  });

  const issue = async (consoleType: string, instanceUuid = INSTANCE) =>
    (
      await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
        key: deployment.agentKeys.cell1,
        body: { instanceUuid, consoleType, host: '127.0.0.1', port: upstream.port },
      })
    ).body as { id: number; token: string };

  jest.setTimeout(20_000);

  it('lets one serial session at a time use a port, across replicas, and frees it when that session ends', async () => {
    const [first, second] = [await issue('serial'), await issue('serial')];
    const a = await connect(`${replicas[0].wsBase}/serial?token=${first.token}`);
    expect(a.ws).toBeDefined();
    expect(await echoes(a.ws!, 'first')).toBe(true);
    expect(await connect(`${replicas[1].wsBase}/serial?token=${second.token}`)).toEqual({ status: 409 });
    expect(await connect(`${replicas[0].wsBase}/serial?token=${second.token}`)).toEqual({ status: 409 });

    const ports = await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/instances/${INSTANCE}/serial-ports`, {
      key: deployment.agentKeys.cell1,
    });
    expect(ports.body.ports).toEqual([{ host: '127.0.0.1', port: upstream.port, free: false, sessionId: expect.any(String) }]);

    const end = closed(a.ws!);
    a.ws!.close();
    await end;
    // The end is recorded asynchronously by replica A; replica B must then let the next one in.
    const b = await waitUntil(
      async () => {
        const attempt = await connect(`${replicas[1].wsBase}/serial?token=${second.token}`);
        return attempt.ws ? attempt : undefined;
      },
      5_000,
      'replica B to let the next serial session in',
      { intervalMs: 50 },
    );
    expect(b.ws).toBeDefined();
    expect(await echoes(b.ws!, 'second')).toBe(true);
    b.ws!.close();
    await closed(b.ws!);
  });

  it('ends the sessions of a revoked instance on every replica within one second', async () => {
    const [one, two, other] = [await issue('novnc'), await issue('novnc'), await issue('novnc', '0e9d8c7b-6a5f-4e3d-8c2b-1a0f9e8d7c6b')];
    const sessions = await Promise.all([
      connect(`${replicas[0].wsBase}/websockify?token=${one.token}`),
      connect(`${replicas[1].wsBase}/websockify?token=${two.token}`),
      connect(`${replicas[1].wsBase}/websockify?token=${other.token}`),
    ]);
    for (const session of sessions) {
      expect(await echoes(session.ws!, 'ok')).toBe(true);
    }
    const ends = sessions.map((session) => closed(session.ws!));
    const revokedAt = Date.now();
    const revoked = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/instances/${INSTANCE}/tokens`, {
      key: deployment.agentKeys.cell1,
    });
    expect(revoked.status).toBe(200);
    const [endOne, endTwo] = await Promise.all(ends.slice(0, 2));
    for (const end of [endOne, endTwo]) {
      expectPolicyClose(end, 'token revoked', { since: revokedAt, withinMs: 1_000 });
    }
    // The other instance's session is untouched.
    expect(await echoes(sessions[2].ws!, 'still here')).toBe(true);
    sessions[2].ws!.close();
    await ends[2];
  });

  it('drains on SIGTERM: answers new upgrades 503, lets sessions run for the grace period, then closes them with 1001', async () => {
    const token = await issue('novnc');
    const { ws } = await connect(`${replicas[0].wsBase}/websockify?token=${token.token}`);
    const end = closed(ws!);
    const signalledAt = Date.now();
    replicas[0].child.kill('SIGTERM');
    // Still served during the grace period...
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await echoes(ws!, 'during drain')).toBe(true);
    // ...but a new upgrade gets a clear 503 (the port stays open until the drain is over).
    expect(await connect(`${replicas[0].wsBase}/websockify?token=${token.token}`)).toEqual({ status: 503 });
    const { code, reason, atMs } = await end;
    expect({ code, reason }).toEqual({ code: 1001, reason: 'proxy shutdown' });
    expect(atMs - signalledAt).toBeGreaterThanOrEqual(1_400);
    // Nest re-raises the signal once the app has closed: the process ends by SIGTERM, as expected.
    expect([0, 'SIGTERM']).toContain(await replicas[0].exited);
    const rows = await queryDatabase(
      deployment.cellUrls.cell1,
      `SELECT close_reason FROM console_sessions WHERE proxy_instance = 'replica-a' AND token_id = $1`,
      [token.id],
    );
    expect(rows).toEqual([{ close_reason: 'proxy shutdown' }]);
    expect(replicas[0].output()).not.toContain(token.token);
  });

  describe('worker processes (KEYHOLE_PROXY_WORKERS=2)', () => {
    let workers: ProxyProcess;
    const baseUrl = () => `http://127.0.0.1:${workers.port}`;

    beforeAll(async () => {
      workers = await startProxyProcess({
        KEYHOLE_CELL_NAME: 'cell1',
        KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
        KEYHOLE_PROXY_INSTANCE: 'workers',
        KEYHOLE_PROXY_WORKERS: '2',
        KEYHOLE_PROXY_DRAIN_GRACE_MS: '1500',
      });
    }, 30_000);

    afterAll(async () => {
      await workers?.stop('SIGKILL');
      for (const pid of workerPids(workers?.child.pid)) {
        process.kill(pid, 'SIGKILL');
      }
    });

    it('serves one port from two processes, each recorded as a replica of its own, and sums their metrics', async () => {
      expect(workerPids(workers.child.pid)).toHaveLength(2);
      // Which worker accepts is the kernel's choice: open sessions in waves until both have.
      let opened = 0;
      let instances: string[] = [];
      for (let wave = 0; wave < 10 && instances.length < 2; wave++) {
        const token = await issue('novnc', '2b7c1f0e-3d4a-4b5c-8d6e-7f8091a2b3c4');
        const sessions = await Promise.all(Array.from({ length: 20 }, () => connect(`${workers.wsBase}/websockify?token=${token.token}`)));
        for (const session of sessions) {
          expect(await echoes(session.ws!, 'hello')).toBe(true);
        }
        opened += sessions.length;
        await Promise.all(
          sessions.map((session) => {
            const end = closed(session.ws!);
            session.ws!.close();
            return end;
          }),
        );
        const rows = await queryDatabase<{ proxy_instance: string }>(
          deployment.cellUrls.cell1,
          `SELECT DISTINCT proxy_instance FROM console_sessions WHERE proxy_instance LIKE 'workers/%' ORDER BY 1`,
        );
        instances = rows.map((row) => row.proxy_instance);
      }
      expect(instances).toHaveLength(2);
      for (const instance of instances) {
        expect(instance).toMatch(/^workers\/\d+$/);
      }
      // Whichever worker answers the scrape, it counts every worker's connects.
      for (let scrape = 0; scrape < 4; scrape++) {
        expect(metricValue(await scrapeMetrics(baseUrl()), 'keyhole_proxy_connects_total', { result: 'accepted' })).toBe(opened);
      }
    });

    it('replaces a worker that dies, and goes on serving', async () => {
      const [victim, survivor] = workerPids(workers.child.pid);
      process.kill(victim, 'SIGKILL');
      const replaced = await waitUntil(
        () => {
          const pids = workerPids(workers.child.pid);
          return pids.length === 2 && !pids.includes(victim) ? pids : undefined;
        },
        15_000,
        'a replacement worker',
      );
      expect(replaced).toContain(survivor);
      await waitUntil(
        () => (workers.output().includes('a console proxy worker exited: starting another') ? true : undefined),
        5_000,
        "the supervisor's line",
      );
      const token = await issue('novnc');
      for (let attempt = 0; attempt < 10; attempt++) {
        const { ws } = await connect(`${workers.wsBase}/websockify?token=${token.token}`);
        expect(await echoes(ws!, `after a restart ${attempt}`)).toBe(true);
        ws!.close();
        await closed(ws!);
      }
    });

    it('exits, as a single process would, when its workers cannot start (cell database unreachable)', async () => {
      const started = startProxyProcess({
        KEYHOLE_CELL_NAME: 'cell1',
        KEYHOLE_CELL_DATABASE_URL: 'postgres://postgres@127.0.0.1:1/nowhere',
        KEYHOLE_DB_CONNECT_TIMEOUT_MS: '500',
        KEYHOLE_PROXY_WORKERS: '2',
      });
      await expect(started).rejects.toThrow(/proxy exited \(1\) before listening[\s\S]*a console proxy worker exited before listening/);
    });

    it('drains every worker on SIGTERM, then exits', async () => {
      const token = await issue('novnc');
      const sessions = await Promise.all(Array.from({ length: 6 }, () => connect(`${workers.wsBase}/websockify?token=${token.token}`)));
      // Each session is through to its console before the signal (one still connecting is closed at once).
      for (const session of sessions) {
        expect(await echoes(session.ws!, 'before drain')).toBe(true);
      }
      const ends = sessions.map((session) => closed(session.ws!));
      const signalledAt = Date.now();
      workers.child.kill('SIGTERM');
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const session of sessions) {
        expect(await echoes(session.ws!, 'during drain')).toBe(true);
      }
      for (const end of await Promise.all(ends)) {
        expect({ code: end.code, reason: end.reason }).toEqual({ code: 1001, reason: 'proxy shutdown' });
        expect(end.atMs - signalledAt).toBeGreaterThanOrEqual(1_400);
      }
      expect(await workers.exited).toBe(0);
      expect(workers.output()).not.toContain(token.token);
    });
  });
});

/** The pids of a process's children (the workers of a supervisor), from /proc. */
function workerPids(pid: number | undefined): number[] {
  if (pid === undefined) {
    return [];
  }
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}
