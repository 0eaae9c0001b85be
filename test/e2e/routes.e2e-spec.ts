import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { RunningProxy, startCell1Proxy } from '../support/console-proxy';
import { queryDatabase, TEST_SERVER_URL } from '../support/databases';
import { startProxyProcess } from '../support/proxy-process';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';
import { stopAfterTests, Teardown } from '../support/teardown';
import { connectConsole, expectRefusedUpgrade, terminateAllClients } from '../support/websocket-client';
import { freePort } from '../support/real/network';
import { expectError, fingerprintOf, insertTokenRow } from './helpers';

/*
 * The routes file as the allow-list of console destinations (SSRF guard): the token API issues no
 * token for a destination that matches no route, and the proxy dials none, whoever wrote the row
 * (Nova, an older keyhole, an attacker with database access). SIGHUP reloads the file in both
 * without ending live sessions; a broken file keeps the table in use.
 */

jest.setTimeout(30_000);

const DATABASE_PORT = Number(new URL(TEST_SERVER_URL).port || 5432);

const teardown = new Teardown();
let dir: string;
let routesFile: string;
let deployment: TestDeployment;
let proxy: RunningProxy;
/** Routed at first; its route is dropped by the reload test. */
let consoleA: TcpUpstream;
/** Not routed at first; the reload test adds it. */
let consoleB: TcpUpstream;

function routesFor(...upstreams: TcpUpstream[]): string {
  return [
    'routes:',
    ...upstreams.map((upstream, index) =>
      [`  - name: console-${index + 1}`, `    match: { cidr: 127.0.0.0/8, ports: "${upstream.port}" }`, '    via: direct'].join('\n'),
    ),
    '',
  ].join('\n');
}

async function issue(port: number, host = '127.0.0.1') {
  return call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
    key: deployment.agentKeys.cell1,
    body: { instanceUuid: randomUUID(), consoleType: 'novnc', host, port },
  });
}

async function issued(port: number): Promise<string> {
  const response = await issue(port);
  expect(response.status).toBe(201);
  return response.body.token as string;
}

/** A row as Nova writes it, straight into the cell database: no API, so no route was checked. */
function insertRow(host: string, port: number): Promise<string> {
  return insertTokenRow(deployment.cellUrls.cell1, { host, port, accessUrlBase: 'http://cell1.console.test:6080/vnc_lite.html' });
}

/** The session row of a token (found by its fingerprint) once its end is recorded. */
async function endedSessionOf(cellUrl: string, token: string): Promise<{ id: string; route: string | null; close_reason: string }> {
  return waitUntil(
    async () => {
      const rows = await queryDatabase<{ id: string; route: string | null; close_reason: string | null }>(
        cellUrl,
        'SELECT id, route, close_reason FROM console_sessions WHERE token_fingerprint = $1 AND ended_at IS NOT NULL',
        [fingerprintOf(token)],
      );
      return rows.length === 1 ? { ...rows[0], close_reason: rows[0].close_reason ?? '' } : undefined;
    },
    5_000,
    'the session to be recorded as ended',
  );
}

/** The log line `message` about one session, parsed, once it is written. */
async function sessionLogLine(lines: () => string[], message: string, sessionId: string): Promise<Record<string, unknown>> {
  return waitUntil(
    () => {
      const line = lines().find((candidate) => candidate.includes(`"msg":"${message}"`) && candidate.includes(sessionId));
      return line === undefined ? undefined : (JSON.parse(line) as Record<string, unknown>);
    },
    5_000,
    `the "${message}" line of session ${sessionId}`,
  );
}

/** The per-route connect counter and the count of the per-route connect time histogram. */
async function routeConnects(httpBase: string, route: string): Promise<{ ok: number; failed: number; timed: number }> {
  const text = await scrapeMetrics(httpBase);
  return {
    ok: metricValue(text, 'keyhole_proxy_route_connects_total', { route, result: 'ok' }) ?? 0,
    failed: metricValue(text, 'keyhole_proxy_route_connects_total', { route, result: 'upstream_failed' }) ?? 0,
    timed: metricValue(text, 'keyhole_proxy_route_connect_seconds_count', { route }) ?? 0,
  };
}

function consoleUrl(token: string): string {
  return `${proxy.wsBase}/websockify?token=${encodeURIComponent(token)}`;
}

async function unroutableCount(): Promise<number> {
  return metricValue(await scrapeMetrics(proxy.httpBase), 'keyhole_proxy_connects_total', { result: 'unroutable' }) ?? 0;
}

/**
 * Every log line of the API and the proxy. (Nest's Logger of a lib writes to the logger of the app
 * that was set up last, so the lines of both are looked for together.)
 */
function logLines(): string[] {
  return [deployment.api.logs(), proxy.logs()].join('\n').split('\n').filter(Boolean);
}

/**
 * Delivers SIGHUP to the API and the proxy of this process and waits until both logged `message`.
 * (Jest gives the code under test a process object of its own, which a real signal to the test
 * process does not reach: the test of the compiled proxy below sends a real one.)
 */
async function hangUp(message: string): Promise<void> {
  const count = () => logLines().filter((line) => line.includes(`"msg":"${message}"`)).length;
  const before = count();
  process.emit('SIGHUP', 'SIGHUP');
  await waitUntil(() => (count() >= before + 2 ? true : undefined), 5_000, `"${message}" from the API and the proxy`);
}

beforeAll(async () => {
  dir = teardown.add(await mkdtemp(path.join(os.tmpdir(), 'keyhole-routes-')), (created) => rm(created, { recursive: true, force: true }));
  routesFile = path.join(dir, 'routes.yaml');
  consoleA = teardown.add(await startTcpUpstream(echo));
  consoleB = teardown.add(await startTcpUpstream(echo));
  await writeFile(routesFile, routesFor(consoleA));
  deployment = teardown.add(await startTestDeployment({ environment: { KEYHOLE_ROUTES_FILE: routesFile } }), (started) => started.stop());
  proxy = teardown.add(await startCell1Proxy(deployment, { KEYHOLE_ROUTES_FILE: routesFile }));
}, 60_000);

stopAfterTests(teardown);

describe('with a routes file', () => {
  it('logs the routes it loaded, in the API and the proxy', () => {
    const loaded = logLines().filter((line) => line.includes('"msg":"routes loaded"'));
    expect(loaded.map((line) => JSON.parse(line))).toEqual([
      expect.objectContaining({ file: routesFile, routes: 1 }),
      expect.objectContaining({ file: routesFile, routes: 1 }),
    ]);
    expect(logLines().join('\n')).not.toContain('every console destination is allowed');
  });

  it("refuses to issue a token for the database's port, or any destination no route allows: 400 UNROUTABLE_CONSOLE, nothing stored", async () => {
    const rowsBefore = await queryDatabase<{ count: string }>(
      deployment.cellUrls.cell1,
      'SELECT count(*)::text AS count FROM console_auth_tokens',
    );
    for (const [host, port] of [
      ['127.0.0.1', DATABASE_PORT],
      ['127.0.0.1', consoleB.port],
      ['169.254.10.1', consoleA.port],
      // A host name never matches a CIDR route: what it resolves to could change before the dial.
      ['localhost', consoleA.port],
    ] as const) {
      const refused = await issue(port, host);
      expectError(refused, 400, 'UNROUTABLE_CONSOLE');
      expect(refused.body.message).toContain(`${host}:${port}`);
      expect(refused.body.details).toEqual({ host, port });
    }
    const rowsAfter = await queryDatabase<{ count: string }>(
      deployment.cellUrls.cell1,
      'SELECT count(*)::text AS count FROM console_auth_tokens',
    );
    expect(rowsAfter).toEqual(rowsBefore);
  });

  it('serves a routed echo console', async () => {
    const client = await connectConsole(consoleUrl(await issued(consoleA.port)));
    expect((await client.roundTrip('routed')).toString()).toBe('routed');
  });

  it("records the session's route: in its row, the operators' listing, its end log line and the per-route metrics", async () => {
    const before = await routeConnects(proxy.httpBase, 'console-1');
    const token = await issued(consoleA.port);
    const client = await connectConsole(consoleUrl(token));
    expect((await client.roundTrip('which route')).toString()).toBe('which route');
    await client.close();

    const row = await endedSessionOf(deployment.cellUrls.cell1, token);
    expect(row).toMatchObject({ route: 'console-1', close_reason: 'client closed' });
    const listing = await call(deployment.api.baseUrl, 'GET', '/v1/cells/cell1/sessions?live=false&limit=100', {
      key: deployment.operatorKey,
    });
    expect(listing.status).toBe(200);
    expect((listing.body.sessions as { id: string }[]).find((session) => session.id === row.id)).toMatchObject({
      route: 'console-1',
      fingerprint: fingerprintOf(token),
    });
    expect(await sessionLogLine(logLines, 'console session ended', row.id)).toMatchObject({
      route: 'console-1',
      reason: 'client closed',
    });
    expect(await routeConnects(proxy.httpBase, 'console-1')).toEqual({ ok: before.ok + 1, failed: before.failed, timed: before.timed + 1 });
  });

  it('refuses with 403 a row written straight into the cell database for a destination outside the routes, without dialling it', async () => {
    for (const target of [consoleB.port, DATABASE_PORT]) {
      const token = await insertRow('127.0.0.1', target);
      const unroutableBefore = await unroutableCount();
      const connectionsBefore = consoleB.connections.length;
      const refused = await expectRefusedUpgrade(consoleUrl(token));
      expect(refused.status).toBe(403);
      expect(JSON.parse(refused.body)).toEqual({ code: 'UNROUTABLE', message: 'console destination is not routable from this proxy' });
      expect(consoleB.connections.length).toBe(connectionsBefore);
      expect(await unroutableCount()).toBe(unroutableBefore + 1);
      const fingerprint = fingerprintOf(token);
      const line = logLines().find(
        (candidate) => candidate.includes('"msg":"refused: no route to the console"') && candidate.includes(fingerprint),
      );
      expect(line).toBeDefined();
      expect(JSON.parse(line!)).toMatchObject({ fingerprint, host: '127.0.0.1', port: target, level: 'warn' });
      expect(logLines().join('\n')).not.toContain(token);
    }
  });

  it('reloads on SIGHUP: live sessions go on, the next connects follow the new table, a broken file keeps it', async () => {
    const live = await connectConsole(consoleUrl(await issued(consoleA.port)));
    expect((await live.roundTrip('before')).toString()).toBe('before');
    const tokenA = await issued(consoleA.port);

    await writeFile(routesFile, routesFor(consoleB));
    await hangUp('routes reloaded');
    // The session opened under the old table is not cut.
    expect((await live.roundTrip('after reload')).toString()).toBe('after reload');
    expect(live.closeEvent).toBeUndefined();
    // The next connect to A (a token issued while A was routed) is refused, and the API now issues for B only.
    expect((await expectRefusedUpgrade(consoleUrl(tokenA))).status).toBe(403);
    expectError(await issue(consoleA.port), 400, 'UNROUTABLE_CONSOLE');
    const tokenB = await issued(consoleB.port);
    const toB = await connectConsole(consoleUrl(tokenB));
    expect((await toB.roundTrip('to b')).toString()).toBe('to b');

    await writeFile(routesFile, routesFor(consoleA).replace(`ports: "${consoleA.port}"`, `ports: "${consoleA.port}-"`));
    await hangUp('routes file refused: the previous routes stay in use');
    const refusal = logLines()
      .filter((line) => line.includes('"msg":"routes file refused: the previous routes stay in use"'))
      .at(-1);
    expect(JSON.parse(refusal!)).toMatchObject({
      level: 'error',
      problems: [`${routesFile}:3: routes[0].match.ports: "${consoleA.port}-" is not a port range`],
    });
    // B's table stays in use.
    expect((await connectConsole(consoleUrl(tokenB))).ws.readyState).toBe(1);
    expect((await expectRefusedUpgrade(consoleUrl(tokenA))).status).toBe(403);
    expect((await live.roundTrip('still here')).toString()).toBe('still here');

    await writeFile(routesFile, routesFor(consoleA));
    await hangUp('routes reloaded');
  });
});

describe('a route whose console does not answer', () => {
  it('closes with 1011, and the row, the log line and the metrics name the route', async () => {
    const deadPort = await freePort();
    const file = path.join(dir, 'dead-end-routes.yaml');
    await writeFile(
      file,
      [routesFor(consoleA), '  - name: dead-end', `    match: { cidr: 127.0.0.0/8, ports: "${deadPort}" }`, '    via: direct', ''].join(
        '\n',
      ),
    );
    const deadEnd = await startCell1Proxy(deployment, { KEYHOLE_ROUTES_FILE: file });
    try {
      const token = await insertRow('127.0.0.1', deadPort);
      const client = await connectConsole(`${deadEnd.wsBase}/websockify?token=${encodeURIComponent(token)}`);
      expect(await client.waitForClose()).toMatchObject({ code: 1011, reason: 'console unreachable: connect refused' });

      const row = await endedSessionOf(deployment.cellUrls.cell1, token);
      expect(row).toMatchObject({ route: 'dead-end', close_reason: 'console unreachable' });
      const lines = () => [...logLines(), ...deadEnd.logs().split('\n')];
      expect(await sessionLogLine(lines, 'console unreachable', row.id)).toMatchObject({ route: 'dead-end', reason: 'connect refused' });
      expect(await sessionLogLine(lines, 'console session ended', row.id)).toMatchObject({
        route: 'dead-end',
        reason: 'console unreachable',
      });
      // A failed connect is counted, and not timed: the histogram is the time to an open stream.
      expect(await routeConnects(deadEnd.httpBase, 'dead-end')).toEqual({ ok: 0, failed: 1, timed: 0 });
      expect(lines().join('\n')).not.toContain(token);
    } finally {
      terminateAllClients();
      await deadEnd.close();
    }
  });
});

describe('without a routes file', () => {
  it('allows every destination as before, and the proxy warns at start that it does; sessions have no route (none in the metrics)', async () => {
    const open = await startCell1Proxy(deployment);
    try {
      expect(open.logs()).toContain('no routes file (KEYHOLE_ROUTES_FILE): every console destination is allowed');
      const token = await insertRow('127.0.0.1', consoleB.port);
      const client = await connectConsole(`${open.wsBase}/websockify?token=${encodeURIComponent(token)}`);
      expect((await client.roundTrip('open')).toString()).toBe('open');
      await client.close();
      // No route: a null in the row, `none` in the metrics.
      expect((await endedSessionOf(deployment.cellUrls.cell1, token)).route).toBeNull();
      expect(await routeConnects(open.httpBase, 'none')).toEqual({ ok: 1, failed: 0, timed: 1 });
    } finally {
      terminateAllClients();
      await open.close();
    }
  });
});

describe('the compiled proxy (npm run build first)', () => {
  it('reloads its routes on a real SIGHUP, in every worker, without a restart', async () => {
    const file = path.join(dir, 'process-routes.yaml');
    await writeFile(file, routesFor(consoleA));
    const running = await startProxyProcess({
      KEYHOLE_CELL_NAME: 'cell1',
      KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
      KEYHOLE_ROUTES_FILE: file,
      KEYHOLE_PROXY_WORKERS: '2',
    });
    const count = (message: string) =>
      running
        .output()
        .split('\n')
        .filter((line) => line.includes(`"msg":"${message}"`)).length;
    try {
      await waitUntil(() => (count('routes loaded') === 2 ? true : undefined), 10_000, 'both workers to load the routes');
      const toB = `${running.wsBase}/websockify?token=${encodeURIComponent(await insertRow('127.0.0.1', consoleB.port))}`;
      expect((await expectRefusedUpgrade(toB)).status).toBe(403);

      await writeFile(file, routesFor(consoleB));
      running.child.kill('SIGHUP');
      await waitUntil(
        () => (count('routes reloaded') === 2 ? true : undefined),
        10_000,
        () => `both workers to reload:\n${running.output()}`,
      );
      // Whichever worker takes them, the next connects follow the new table.
      for (let attempt = 0; attempt < 4; attempt++) {
        const client = await connectConsole(toB);
        expect((await client.roundTrip('reloaded')).toString()).toBe('reloaded');
        await client.close();
      }
    } finally {
      terminateAllClients();
      expect(await running.stop()).toBe(0);
    }
  });

  it('does not start with a bad routes file, and says why', async () => {
    const file = path.join(dir, 'bad-routes.yaml');
    await writeFile(file, routesFor(consoleA).replace('via: direct', 'via: { ssh: { host: 169.254.30.7 } }'));
    await expect(
      startProxyProcess({ KEYHOLE_CELL_NAME: 'cell1', KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1, KEYHOLE_ROUTES_FILE: file }),
    ).rejects.toThrow(`${file}:4: routes[0].via.ssh.user: required`);
  });
});
