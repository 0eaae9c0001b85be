import { randomBytes, randomUUID } from 'node:crypto';
import { connect as connectTcp, Socket } from 'node:net';
import { ManualClock } from '@keyhole/core';
import { dropDatabase } from '@keyhole/db';
import { testConfig } from '../support/config';
import { RunningProxy, startConsoleProxy } from '../support/console-proxy';
import { createTestDatabase, queryDatabase } from '../support/databases';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { stopAfterTests, Teardown } from '../support/teardown';
import { call } from '../support/token-api';
import { waitUntil, withDeadline } from '../support/wait';
import { ConsoleClient, connectConsole, expectRefusedUpgrade, RefusedUpgrade } from '../support/websocket-client';
import { fingerprintOf, insertTokenRow } from './helpers';

/*
 * What the console proxy decides on the HTTP upgrade, before any websocket exists: each refusal
 * with its status line, no websocket, no console connection and no session record; and what it
 * accepts (origins, cookies, subprotocols). The token API and the main proxies share one manual
 * clock, so expiry is tested to the second without waiting.
 */

jest.setTimeout(30_000);

const CELL1_HOST = 'cell1.console.test:6080';
const CELL1_ORIGIN = 'http://cell1.console.test';

interface IssuedToken {
  id: number;
  token: string;
  instanceUuid: string;
  accessUrlBase: string;
}

const clock = new ManualClock(Date.now());
let deployment: TestDeployment;
let echoUpstream: TcpUpstream;
let proxy: RunningProxy;
/** Every proxy started by this file, to read the logs of. */
const proxies: RunningProxy[] = [];
const teardown = new Teardown();

function cellConfig(cellName: string, databaseUrl: string, environment: Record<string, string> = {}) {
  return testConfig(deployment.controlUrl, { KEYHOLE_CELL_NAME: cellName, KEYHOLE_CELL_DATABASE_URL: databaseUrl, ...environment });
}

async function startProxy(
  cellName: string,
  databaseUrl: string,
  environment: Record<string, string> = {},
  withManualClock = true,
): Promise<RunningProxy> {
  const started = teardown.add(await startConsoleProxy(cellConfig(cellName, databaseUrl, environment), withManualClock ? { clock } : {}));
  proxies.push(started);
  return started;
}

async function issue(body: Record<string, unknown> = {}, cell = 'cell1', key = deployment.agentKeys.cell1): Promise<IssuedToken> {
  const response = await call(deployment.api.baseUrl, 'POST', `/v1/cells/${cell}/tokens`, {
    key,
    body: { instanceUuid: randomUUID(), consoleType: 'novnc', host: '127.0.0.1', port: echoUpstream.port, ...body },
  });
  expect(response.status).toBe(201);
  return response.body as IssuedToken;
}

function url(running: RunningProxy, token?: string): string {
  return token === undefined ? `${running.wsBase}/websockify` : `${running.wsBase}/websockify?token=${encodeURIComponent(token)}`;
}

async function sessionCount(databaseUrl = deployment.cellUrls.cell1): Promise<number> {
  const [row] = await queryDatabase<{ count: string }>(databaseUrl, 'SELECT count(*)::text AS count FROM console_sessions');
  return Number(row.count);
}

/**
 * Asserts a refusal before the upgrade: the status, no websocket, and nothing behind it (no
 * console connection, no session record). Returns the refusal to compare bodies.
 */
async function expectRefused(
  target: string,
  status: number,
  options: { headers?: Record<string, string>; origin?: string; databaseUrl?: string } = {},
): Promise<RefusedUpgrade> {
  const connectionsBefore = echoUpstream.connections.length;
  const sessionsBefore = await sessionCount(options.databaseUrl);
  const refused = await expectRefusedUpgrade(target, { headers: options.headers, origin: options.origin });
  expect(refused.status).toBe(status);
  expect(refused.headers.upgrade).toBeUndefined();
  // The proxy's fixed JSON error, never stored nor sniffed.
  expect(refused.headers['content-type']).toMatch(/^application\/json/);
  expect(refused.headers['cache-control']).toBe('no-store');
  expect(refused.headers['x-content-type-options']).toBe('nosniff');
  expect(JSON.parse(refused.body)).toEqual({ code: expect.stringMatching(/^[A-Z_]+$/), message: expect.any(String) });
  expect(echoUpstream.connections.length).toBe(connectionsBefore);
  expect(await sessionCount(options.databaseUrl)).toBe(sessionsBefore);
  return refused;
}

/**
 * Opens a session, checks it carries bytes both ways and waits for its session record (written
 * within 20 ms of the connect), so that a refusal checked next counts only its own records.
 */
async function expectAccepted(
  target: string,
  options: Parameters<typeof connectConsole>[1] = {},
  databaseUrl = deployment.cellUrls.cell1,
): Promise<ConsoleClient> {
  const sessionsBefore = await sessionCount(databaseUrl);
  const client = await connectConsole(target, options);
  expect((await client.roundTrip('hello console')).toString()).toBe('hello console');
  await waitUntil(async () => ((await sessionCount(databaseUrl)) > sessionsBefore ? true : undefined), 2_000, 'the session record');
  return client;
}

beforeAll(async () => {
  deployment = teardown.add(await startTestDeployment({ clock }), (started) => started.stop());
  echoUpstream = teardown.add(await startTcpUpstream(echo));
  proxy = await startProxy('cell1', deployment.cellUrls.cell1);
}, 60_000);

stopAfterTests(teardown);

describe('token checks', () => {
  it('refuses an upgrade without a token with 401', async () => {
    const refused = await expectRefused(url(proxy), 401);
    expect(refused.body).toMatch(/token/);
  });

  it('refuses an unknown token with 401', async () => {
    await expectRefused(url(proxy, randomBytes(32).toString('base64url')), 401);
  });

  it('refuses a token that is not even plausible (too long, control characters) with 401', async () => {
    await expectRefused(url(proxy, 'x'.repeat(300)), 401);
    await expectRefused(url(proxy, 'abc\u0001def'), 401);
  });

  it('accepts a token until the second it expires, then refuses it with 401 (Nova: valid while expires > now)', async () => {
    const token = await issue({ ttlSeconds: 60 });
    clock.advanceSeconds(59);
    const client = await expectAccepted(url(proxy, token.token));
    await client.close();
    clock.advanceSeconds(1);
    await expectRefused(url(proxy, token.token), 401);
  });

  it('refuses a revoked token with 401', async () => {
    const token = await issue();
    const revoked = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/tokens/${token.id}`, { key: deployment.agentKeys.cell1 });
    expect(revoked.status).toBe(204);
    await expectRefused(url(proxy, token.token), 401);
  });

  it('refuses a token of another cell with 401', async () => {
    const other = await issue({}, 'cell2', deployment.agentKeys.cell2);
    await expectRefused(url(proxy, other.token), 401);
  });

  it('answers unknown, expired and revoked tokens identically', async () => {
    const unknown = await expectRefused(url(proxy, randomBytes(32).toString('base64url')), 401);
    const expiring = await issue({ ttlSeconds: 5 });
    clock.advanceSeconds(5);
    const expired = await expectRefused(url(proxy, expiring.token), 401);
    const revokedToken = await issue();
    await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/tokens/${revokedToken.id}`, { key: deployment.agentKeys.cell1 });
    const revoked = await expectRefused(url(proxy, revokedToken.token), 401);

    const shape = (refusal: RefusedUpgrade) => ({
      status: refusal.status,
      body: refusal.body,
      contentType: refusal.headers['content-type'],
      length: refusal.headers['content-length'],
      headerNames: Object.keys(refusal.headers)
        .filter((name) => name !== 'date')
        .sort(),
    });
    expect(shape(expired)).toEqual(shape(unknown));
    expect(shape(revoked)).toEqual(shape(unknown));
    expect(unknown.body).not.toContain(expiring.token);
  });

  it('takes the token from a cookie when the URL has none, quoted or not, past a malformed cookie', async () => {
    const token = await issue();
    const first = await expectAccepted(url(proxy), { headers: { cookie: `token="${token.token}"` } });
    await first.close();
    const second = await expectAccepted(url(proxy), { headers: { cookie: `?=!; lang=en; token=${token.token}` } });
    await second.close();
  });

  it('logs refused tokens at debug level with their fingerprint, and counts them in one info line (a flood of guesses is not a flood of lines)', async () => {
    const counting = await startProxy('cell1', deployment.cellUrls.cell1, { KEYHOLE_PROXY_INSTANCE: 'proxy-refusals' });
    const guesses = [1, 2, 3].map(() => randomBytes(32).toString('base64url'));
    for (const guess of guesses) {
      await expectRefused(url(counting, guess), 401);
    }
    await expectRefused(url(counting, 'x'.repeat(300)), 401);
    // Stopping writes the count of the last interval.
    await teardown.stop(counting);

    // Nest's Logger is process-wide: a line may land in another in-process proxy's capture.
    const text = proxies.map((running) => running.logs()).join('\n');
    const lines = text
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    const refusals = lines.filter((line) => line.msg === 'refused an invalid or expired token');
    for (const guess of guesses) {
      const fingerprint = fingerprintOf(guess);
      expect(refusals.filter((line) => line.fingerprint === fingerprint).map((line) => line.level)).toEqual(['debug']);
      expect(text).not.toContain(guess);
    }
    const counts = lines.filter((line) => line.msg === 'refused invalid or expired tokens' && line.instance === 'proxy-refusals');
    expect(counts).toEqual([expect.objectContaining({ level: 'info', refused: 4 })]);
  });

  it('prefers the query token over the cookie', async () => {
    const good = await issue();
    const client = await expectAccepted(url(proxy, good.token), { headers: { cookie: `token=${randomBytes(32).toString('base64url')}` } });
    await client.close();
    await expectRefused(url(proxy, randomBytes(32).toString('base64url')), 401, { headers: { cookie: `token=${good.token}` } });
  });
});

describe('console types', () => {
  it('refuses with 404 a console type this proxy does not serve, and serves the ones it does', async () => {
    const serialOnly = await startProxy('cell1', deployment.cellUrls.cell1, { KEYHOLE_PROXY_CONSOLE_TYPES: 'serial' });
    const refused = await expectRefused(url(serialOnly, (await issue({ consoleType: 'novnc' })).token), 404);
    expect(refused.body).toContain('novnc');
    const serialUpstream = teardown.add(await startTcpUpstream(echo));
    const client = await expectAccepted(url(serialOnly, (await issue({ consoleType: 'serial', port: serialUpstream.port })).token));
    await client.close();
  });
});

describe('origin checks (Nova, CVE-2015-0259)', () => {
  // cell1's access URL bases are http://cell1.console.test:6080/<page>.
  it('accepts a browser page from the proxy host, whatever the port', async () => {
    const token = await issue();
    expect(token.accessUrlBase).toMatch(/^http:\/\/cell1\.console\.test:6080\//);
    const client = await expectAccepted(url(proxy, token.token), { origin: CELL1_ORIGIN, headers: { host: CELL1_HOST } });
    await client.close();
  });

  it('accepts a client that sends no Origin (not a browser)', async () => {
    const client = await expectAccepted(url(proxy, (await issue()).token), { headers: { host: CELL1_HOST } });
    await client.close();
  });

  it('refuses with 403 a page from another host', async () => {
    await expectRefused(url(proxy, (await issue()).token), 403, { origin: 'http://evil.example', headers: { host: CELL1_HOST } });
    await expectRefused(url(proxy, (await issue()).token), 403, {
      origin: 'http://cell1.console.test.evil.example',
      headers: { host: CELL1_HOST },
    });
  });

  it('refuses with 403 a page loaded over https when the access URL is http', async () => {
    await expectRefused(url(proxy, (await issue()).token), 403, { origin: 'https://cell1.console.test', headers: { host: CELL1_HOST } });
    // Behind a TLS terminator the proxy trusts (this test connects from 127.0.0.1).
    const behindTerminator = await startProxy('cell1', deployment.cellUrls.cell1, { KEYHOLE_TRUSTED_PROXIES: '127.0.0.1' });
    await expectRefused(url(behindTerminator, (await issue()).token), 403, {
      origin: CELL1_ORIGIN,
      headers: { host: CELL1_HOST, 'x-forwarded-proto': 'https' },
    });
  });

  it('refuses with 403 an Origin that is blank or not a URL', async () => {
    await expectRefused(url(proxy, (await issue()).token), 403, { headers: { host: CELL1_HOST, origin: '' } });
    await expectRefused(url(proxy, (await issue()).token), 403, { headers: { host: CELL1_HOST, origin: 'null' } });
  });

  it('accepts a configured extra origin (KEYHOLE_PROXY_ALLOWED_ORIGINS), which other proxies refuse', async () => {
    const allowing = await startProxy('cell1', deployment.cellUrls.cell1, { KEYHOLE_PROXY_ALLOWED_ORIGINS: 'Console.Example.com' });
    const client = await expectAccepted(url(allowing, (await issue()).token), {
      origin: 'http://console.example.com',
      headers: { host: CELL1_HOST },
    });
    await client.close();
    await expectRefused(url(allowing, (await issue()).token), 403, { origin: 'http://other.example.com', headers: { host: CELL1_HOST } });
    await expectRefused(url(proxy, (await issue()).token), 403, { origin: 'http://console.example.com', headers: { host: CELL1_HOST } });
  });

  describe('a cell served over https behind a TLS terminator', () => {
    let httpsProxy: RunningProxy;
    let cell3Url: string;
    const CELL3_HOST = 'cell3.console.test:6443';

    beforeAll(async () => {
      const database = teardown.add(await createTestDatabase('cell'), (created) => created.drop());
      cell3Url = database.url;
      const registered = await call(deployment.api.baseUrl, 'POST', '/v1/cells', {
        key: deployment.operatorKey,
        body: { name: 'cell3', databaseUrl: database.url, proxyUrl: 'https://cell3.console.test:6443' },
      });
      expect(registered.status).toBe(201);
      // The terminator connects from 127.0.0.1: its X-Forwarded-Proto is believed.
      httpsProxy = await startProxy('cell3', database.url, { KEYHOLE_TRUSTED_PROXIES: '127.0.0.1' });
    });

    const issueCell3 = async () => {
      const token = await issue({}, 'cell3', deployment.operatorKey);
      expect(token.accessUrlBase).toMatch(/^https:\/\/cell3\.console\.test:6443\//);
      return token;
    };

    it('accepts an https page from its host', async () => {
      const client = await expectAccepted(
        url(httpsProxy, (await issueCell3()).token),
        { origin: 'https://cell3.console.test', headers: { host: CELL3_HOST } },
        cell3Url,
      );
      await client.close();
    });

    it('refuses an http page with 403', async () => {
      await expectRefused(url(httpsProxy, (await issueCell3()).token), 403, {
        origin: 'http://cell3.console.test',
        headers: { host: CELL3_HOST },
        databaseUrl: cell3Url,
      });
    });

    it('accepts an http origin when X-Forwarded-Proto says the page was https (Nova test_..._http_forwarded_proto_https)', async () => {
      const client = await expectAccepted(
        url(httpsProxy, (await issueCell3()).token),
        { origin: 'http://cell3.console.test', headers: { host: CELL3_HOST, 'x-forwarded-proto': 'https' } },
        cell3Url,
      );
      await client.close();
    });
  });
});

describe('subprotocols', () => {
  it('answers "binary" when the client offers it', async () => {
    const client = await expectAccepted(url(proxy, (await issue()).token), { protocols: ['binary'] });
    expect(client.ws.protocol).toBe('binary');
    await client.close();
  });

  it('answers no subprotocol when none is offered, and the session works', async () => {
    const client = await expectAccepted(url(proxy, (await issue()).token));
    expect(client.ws.protocol).toBe('');
    const bytes = Buffer.from([0, 255, 1, 254]);
    expect((await client.roundTrip(bytes)).equals(bytes)).toBe(true);
    await client.close();
  });

  it('answers "binary" to a client that offers base64 and binary', async () => {
    const client = await expectAccepted(url(proxy, (await issue()).token), { protocols: ['base64', 'binary'] });
    expect(client.ws.protocol).toBe('binary');
    await client.close();
  });

  it('refuses with 400 a client that offers only base64 (websockify refuses it too; keyhole speaks binary only)', async () => {
    const refused = await expectRefused(url(proxy, (await issue()).token), 400, { headers: { 'Sec-WebSocket-Protocol': 'base64' } });
    expect(JSON.parse(refused.body)).toEqual({
      code: 'UNSUPPORTED_SUBPROTOCOL',
      message: expect.stringContaining('"binary"'),
    });
  });
});

describe('malformed or abandoned upgrades', () => {
  /** Sends an upgrade request by hand; resolves with everything the proxy answered. */
  function rawUpgrade(port: number, target: string, headers: string[], abandon = false): Promise<string> {
    return new Promise((resolve, reject) => {
      const socket: Socket = connectTcp({ host: '127.0.0.1', port });
      let answer = '';
      socket.on('data', (data: Buffer) => (answer += data.toString('latin1')));
      socket.on('error', () => undefined);
      socket.on('close', () => resolve(answer));
      socket.once('connect', () => {
        socket.write([`GET ${target} HTTP/1.1`, 'Host: 127.0.0.1', ...headers, '', ''].join('\r\n'));
        if (abandon) {
          socket.destroy();
        }
      });
      setTimeout(() => reject(new Error('no answer to the raw upgrade')), 5_000).unref();
    });
  }

  /** A serial console on its own port, and the number of its connections still open. */
  async function serialConsole() {
    const upstream = teardown.add(await startTcpUpstream(echo));
    return { upstream, openConnections: () => upstream.connections.filter((socket) => !socket.destroyed).length };
  }

  it('refuses an invalid websocket handshake with 400, leaving no console connection and no busy serial port behind', async () => {
    const { upstream, openConnections } = await serialConsole();
    const token = await issue({ consoleType: 'serial', port: upstream.port });
    const answer = await rawUpgrade(proxy.port, `/websockify?token=${token.token}`, [
      'Connection: Upgrade',
      'Upgrade: websocket',
      'Sec-WebSocket-Version: 13',
      'Sec-WebSocket-Key: not-a-valid-key',
    ]);
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    // The proxy's fixed JSON refusal, not ws's own text/html answer (found by console-proxy-fuzz).
    expect(answer).toMatch(/\r\nContent-Type: application\/json/i);
    expect(answer).toMatch(/\r\nCache-Control: no-store/i);
    expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))).toEqual({ code: 'INVALID_HANDSHAKE', message: expect.any(String) });
    await waitUntil(() => (openConnections() === 0 ? true : undefined), 3_000, 'no open console connection');
    // The serial port is free for the next client.
    const client = await expectAccepted(url(proxy, (await issue({ consoleType: 'serial', port: upstream.port })).token));
    await client.close();
  });

  it('answers an HTTP/1.1 request without Host with the fixed JSON 400 (found by console-proxy-fuzz: Node answered a bare 400)', async () => {
    const answer = await new Promise<string>((resolve, reject) => {
      const socket: Socket = connectTcp({ host: '127.0.0.1', port: proxy.port });
      let text = '';
      socket.on('data', (data: Buffer) => (text += data.toString('latin1')));
      socket.on('error', () => undefined);
      socket.on('close', () => resolve(text));
      socket.once('connect', () => socket.write('GET /vnc_lite.html HTTP/1.1\r\nConnection: close\r\n\r\n'));
      setTimeout(() => reject(new Error('no answer')), 5_000).unref();
    });
    expect(answer).toMatch(/^HTTP\/1\.1 400 /);
    expect(answer).toMatch(/\r\nCache-Control: no-store/i);
    expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))).toEqual({ code: 'INVALID_REQUEST', message: expect.any(String) });
  });

  it('leaves no console connection and no busy serial port behind when the client goes away during the checks', async () => {
    const { upstream, openConnections } = await serialConsole();
    const token = await issue({ consoleType: 'serial', port: upstream.port });
    await rawUpgrade(
      proxy.port,
      `/websockify?token=${token.token}`,
      [
        'Connection: Upgrade',
        'Upgrade: websocket',
        'Sec-WebSocket-Version: 13',
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
      ],
      true,
    );
    const liveRows = async () =>
      Number(
        (
          await queryDatabase<{ count: string }>(
            deployment.cellUrls.cell1,
            'SELECT count(*)::text AS count FROM console_sessions WHERE token_id = $1 AND ended_at IS NULL',
            [token.id],
          )
        )[0].count,
      );
    // The proxy handles the request after the client left: wait for a sign of it (a console
    // connection or a session record). A proxy that notices the departure first leaves neither,
    // so this wait is bounded and its timeout is not a failure.
    await waitUntil(
      async () => (upstream.connections.length > 0 || (await liveRows()) > 0 ? true : undefined),
      2_000,
      'the abandoned upgrade to be handled',
    ).catch(() => undefined);
    await waitUntil(async () => (openConnections() === 0 && (await liveRows()) === 0 ? true : undefined), 3_000, 'nothing left behind');
    const client = await expectAccepted(url(proxy, (await issue({ consoleType: 'serial', port: upstream.port })).token));
    await client.close();
  });
});

describe('cell database unreachable', () => {
  it('refuses with 503, not 401, when the tokens cannot be checked (fail closed)', async () => {
    // A cell database of its own, with one token row written as Nova or the API would.
    const database = teardown.add(await createTestDatabase('cell'), (created) => created.drop());
    const token = await insertTokenRow(database.url, {
      host: '127.0.0.1',
      port: echoUpstream.port,
      accessUrlBase: 'http://cellx.console.test:6080/vnc_lite.html',
    });
    const isolated = await startProxy('cellx', database.url, {}, false);
    const client = await expectAccepted(url(isolated, token), {}, database.url);
    await client.close();

    // The database goes away: connections are ended and it no longer exists.
    await dropDatabase(database.url);

    const connectionsBefore = echoUpstream.connections.length;
    for (const presented of [token, randomBytes(32).toString('base64url')]) {
      const refused = await withDeadline(expectRefusedUpgrade(url(isolated, presented)), 10_000, 'the refusal');
      expect(refused.status).toBe(503);
      expect(refused.body).not.toContain(presented);
    }
    expect(echoUpstream.connections.length).toBe(connectionsBefore);
    const ready = await fetch(`${isolated.httpBase}/readyz`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toMatchObject({ status: 'unavailable', cellDatabase: false });
  });
});
