import WebSocket from 'ws';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { queryDatabase } from '../support/databases';
import { ProxyProcess, startProxyProcess } from '../support/proxy-process';
import { call } from '../support/token-api';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';

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

function closed(ws: WebSocket): Promise<{ code: number; reason: string; atMs: number }> {
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
    replicas = await Promise.all([startProxyProcess({ ...environment, KEYHOLE_PROXY_INSTANCE: 'replica-a' }), startProxyProcess({ ...environment, KEYHOLE_PROXY_INSTANCE: 'replica-b' })]);
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

    const ports = await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/instances/${INSTANCE}/serial-ports`, { key: deployment.agentKeys.cell1 });
    expect(ports.body.ports).toEqual([{ host: '127.0.0.1', port: upstream.port, free: false, sessionId: expect.any(String) }]);

    const end = closed(a.ws!);
    a.ws!.close();
    await end;
    // The end is recorded asynchronously by replica A; replica B must then let the next one in.
    const deadline = Date.now() + 5_000;
    let b: { ws?: WebSocket; status?: number } = {};
    while (Date.now() < deadline) {
      b = await connect(`${replicas[1].wsBase}/serial?token=${second.token}`);
      if (b.ws) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
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
    for (const session of sessions) expect(await echoes(session.ws!, 'ok')).toBe(true);
    const ends = sessions.map((session) => closed(session.ws!));
    const revokedAt = Date.now();
    const revoked = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/instances/${INSTANCE}/tokens`, { key: deployment.agentKeys.cell1 });
    expect(revoked.status).toBe(200);
    const [endOne, endTwo] = await Promise.all(ends.slice(0, 2));
    for (const end of [endOne, endTwo]) {
      expect(end).toMatchObject({ code: 1008, reason: 'token revoked' });
      expect(end.atMs - revokedAt).toBeLessThan(1_000);
    }
    // The other instance's session is untouched.
    expect(await echoes(sessions[2].ws!, 'still here')).toBe(true);
    sessions[2].ws!.close();
    await ends[2];
  });

  it('drains on SIGTERM: stops accepting, lets sessions run for the grace period, then closes them with 1001', async () => {
    const token = await issue('novnc');
    const { ws } = await connect(`${replicas[0].wsBase}/websockify?token=${token.token}`);
    const end = closed(ws!);
    const signalledAt = Date.now();
    replicas[0].child.kill('SIGTERM');
    // Still served during the grace period...
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await echoes(ws!, 'during drain')).toBe(true);
    // ...but no new connection is accepted.
    await expect(connect(`${replicas[0].wsBase}/websockify?token=${token.token}`)).rejects.toThrow(/ECONNREFUSED/);
    const { code, reason, atMs } = await end;
    expect({ code, reason }).toEqual({ code: 1001, reason: 'proxy shutdown' });
    expect(atMs - signalledAt).toBeGreaterThanOrEqual(1_400);
    // Nest re-raises the signal once the app has closed: the process ends by SIGTERM, as expected.
    expect([0, 'SIGTERM']).toContain(await replicas[0].exited);
    const rows = await queryDatabase(deployment.cellUrls.cell1, `SELECT close_reason FROM console_sessions WHERE proxy_instance = 'replica-a' AND token_id = $1`, [token.id]);
    expect(rows).toEqual([{ close_reason: 'proxy shutdown' }]);
    expect(replicas[0].output()).not.toContain(token.token);
  });
});
