import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { connect as connectTcp } from 'node:net';
import { CellsService } from '@keyhole/cells';
import { testConfig } from '../support/config';
import { RunningProxy, startConsoleProxy } from '../support/console-proxy';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { Browser, isChromiumAvailable, launchBrowser } from '../support/real/browser';
import { startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { call } from '../support/token-api';
import { waitUntil, withDeadline } from '../support/wait';
import { expectRefusedUpgrade } from '../support/websocket-client';
import { expectError, issueBody } from './helpers';

/*
 * Nothing echoes a token: every answer of the console proxy and the token API that is not a page,
 * sent a console token in its path or query, is a fixed JSON error that repeats neither, is never
 * stored (no-store) nor sniffed (nosniff). And the noVNC page, opened from a crafted link that names
 * another host, still connects to its own origin only.
 */

jest.setTimeout(60_000);

/** Debian's spice-html5 page, which the proxy serves when the package is installed. */
const SPICE_AUTO_PAGE = '/usr/share/spice-html5/spice_auto.html';

type Answer = Awaited<ReturnType<typeof call>>;

/** Asserts that an answer holds `secret` nowhere (status line aside: it has none of ours), and its fixed headers. */
function expectNoEcho(answer: { status: number; body: unknown; headers: Headers | Record<string, unknown> }, secret: string): void {
  const headers = answer.headers instanceof Headers ? Object.fromEntries(answer.headers.entries()) : answer.headers;
  const text = typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body ?? '');
  expect({ status: answer.status, echoedInBody: text.includes(secret), echoedInHeaders: JSON.stringify(headers).includes(secret) }).toEqual(
    {
      status: answer.status,
      echoedInBody: false,
      echoedInHeaders: false,
    },
  );
  expect(headers['cache-control']).toBe('no-store');
  expect(headers['x-content-type-options']).toBe('nosniff');
  expect(String(headers['content-type'])).toMatch(/^application\/json/);
}

/** The proxy's one error shape: exactly `{code, message}`. */
function expectProxyError(answer: Answer, status: number, code: string): void {
  expect({ status: answer.status, body: answer.body }).toEqual({ status, body: { code, message: expect.any(String) } });
}

/** Sends `request` verbatim on a TCP connection and resolves with everything answered until the server closes. */
async function rawExchange(port: number, request: string): Promise<{ status: number; body: string; headers: Record<string, string> }> {
  const socket = connectTcp(port, '127.0.0.1');
  socket.end(request);
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  await withDeadline(once(socket, 'close'), 10_000, 'the server to close the connection');
  const [head, body = ''] = Buffer.concat(chunks).toString('utf8').split('\r\n\r\n');
  const [statusLine, ...lines] = head.split('\r\n');
  const headers = Object.fromEntries(
    lines.map((line) => [line.slice(0, line.indexOf(':')).toLowerCase(), line.slice(line.indexOf(':') + 1).trim()]),
  );
  return { status: Number(statusLine.split(' ')[1]), body, headers };
}

describe('nothing echoes a token', () => {
  let deployment: TestDeployment;
  let proxy: RunningProxy;
  let upstream: TcpUpstream;
  let token: string;

  beforeAll(async () => {
    deployment = await startTestDeployment();
    proxy = await startConsoleProxy(
      testConfig(deployment.controlUrl, { KEYHOLE_CELL_NAME: 'cell1', KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1 }),
    );
    await deployment.api.app.get(CellsService).updateProxyUrl('cell1', proxy.httpBase);
    upstream = await startTcpUpstream();
    const issued = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: deployment.agentKeys.cell1,
      body: issueBody({ host: '127.0.0.1', port: upstream.port }),
    });
    expect(issued.status).toBe(201);
    token = issued.body.token;
  }, 60_000);

  afterAll(async () => {
    await proxy?.close();
    await upstream?.close();
    await deployment?.stop();
  });

  describe('the console proxy', () => {
    const plainRequests: [string, string, (token: string) => string, number, string][] = [
      ['a non-websocket GET of the websocket path', 'GET', (t) => `/websockify?token=${t}`, 404, 'NOT_FOUND'],
      ['an unknown path with the token in it', 'GET', (t) => `/${t}`, 404, 'NOT_FOUND'],
      ['an unknown path with the token in the query', 'GET', (t) => `/nothing/here?token=${t}`, 404, 'NOT_FOUND'],
      ['a missing noVNC module', 'GET', (t) => `/core/${t}.js?token=${t}`, 404, 'NOT_FOUND'],
      ['an unsafe (encoded dot-dot) path', 'GET', (t) => `/keyhole/%2e%2e/${t}?token=${t}`, 404, 'NOT_FOUND'],
      ['a POST to the websocket path', 'POST', (t) => `/websockify?token=${t}`, 404, 'NOT_FOUND'],
      ['a PUT to the noVNC page', 'PUT', (t) => `/vnc_lite.html?path=websockify%3Ftoken%3D${t}`, 404, 'NOT_FOUND'],
      ['a DELETE of the health check', 'DELETE', (t) => `/healthz?token=${t}`, 404, 'NOT_FOUND'],
      ['a PATCH of the metrics', 'PATCH', (t) => `/metrics?token=${t}`, 404, 'NOT_FOUND'],
    ];

    it.each(plainRequests)('answers %s with a fixed JSON error', async (_name, method, path, status, code) => {
      const answer = await call(proxy.httpBase, method, path(token), { headers: { 'x-forwarded-for': token } });
      expectProxyError(answer, status, code);
      expectNoEcho(answer, token);
    });

    it('answers an OPTIONS request without the token and without a page', async () => {
      const answer = await call(proxy.httpBase, 'OPTIONS', `/websockify?token=${token}`);
      expect(answer.status).toBeGreaterThanOrEqual(400);
      expectNoEcho(answer, token);
    });

    it.each([
      ['an unknown token', (t: string) => `/websockify?token=${t.slice(0, -4)}AAAA`, 401, 'INVALID_TOKEN'],
      ['no token', () => '/websockify?tokn=', 401, 'NO_TOKEN'],
    ])('refuses an upgrade with %s with a fixed JSON error', async (_name, path, status, code) => {
      const url = `${proxy.wsBase}${path(token)}`;
      const refused = await expectRefusedUpgrade(url, { headers: { origin: proxy.httpBase } });
      const answer = { status: refused.status, body: JSON.parse(refused.body) as unknown, headers: refused.headers };
      expect({ status: answer.status, body: answer.body }).toEqual({ status, body: { code, message: expect.any(String) } });
      expectNoEcho(answer, token.slice(0, -4));
    });

    it('refuses an upgrade from another site with a fixed JSON error that names no token', async () => {
      const refused = await expectRefusedUpgrade(`${proxy.wsBase}/websockify?token=${token}`, {
        headers: { origin: 'http://evil.example' },
      });
      expect(refused.status).toBe(403);
      expect(JSON.parse(refused.body)).toEqual({ code: 'FORBIDDEN_ORIGIN', message: expect.any(String) });
      expectNoEcho({ status: refused.status, body: refused.body, headers: refused.headers }, token);
    });

    it('serves pages reached with a token as no-store, with a connect-src of its own origin only', async () => {
      const response = await fetch(`${proxy.httpBase}/vnc_lite.html?path=websockify%3Ftoken%3D${token}&host=evil.example&port=1`);
      expect(response.status).toBe(200);
      await response.text();
      expect(response.headers.get('cache-control')).toBe('no-store');
      expect(response.headers.get('x-content-type-options')).toBe('nosniff');
      const host = new URL(proxy.httpBase).host;
      const connectSource = /(?:^|;\s*)(connect-src [^;]*)/.exec(response.headers.get('content-security-policy') ?? '')?.[1];
      expect(connectSource).toBe(`connect-src 'self' ws://${host} wss://${host}`);
    });
  });

  describe('requests the HTTP parser refuses', () => {
    const malformed = (t: string) => `GET /websockify?token=${t} HTTP/1.1\r\nHost: 127.0.0.1\r\nNot a header ${t}\r\n\r\n`;
    const oversized = (t: string) => `GET /websockify?token=${t} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: ${t.repeat(1_000)}\r\n\r\n`;

    it.each([
      ['the proxy', 'a malformed header', malformed, 400, 'INVALID_REQUEST'],
      ['the proxy', 'headers too large', oversized, 431, 'HEADERS_TOO_LARGE'],
      ['the API', 'a malformed header', malformed, 400, 'INVALID_INPUT'],
      ['the API', 'headers too large', oversized, 400, 'INVALID_INPUT'],
    ])('%s answers %s with a fixed JSON error', async (server, _name, request, status, code) => {
      const port = server === 'the proxy' ? proxy.port : new URL(deployment.api.baseUrl).port;
      const answer = await rawExchange(Number(port), request(token));
      expect({ status: answer.status, code: (JSON.parse(answer.body) as { code: string }).code }).toEqual({ status, code });
      expectNoEcho(answer, token);
    });
  });

  describe('the token API', () => {
    const requests: [string, string, (token: string) => string, 'none' | 'agent' | 'operator', number, string, Record<string, unknown>][] =
      [
        ['an unknown path', 'GET', (t) => `/v1/${t}?token=${t}`, 'none', 404, 'NOT_FOUND', {}],
        ['Nova-style token in the path', 'GET', (t) => `/v1/tokens/${t}`, 'operator', 404, 'NOT_FOUND', {}],
        ['an unknown method', 'PATCH', (t) => `/v1/cells?token=${t}`, 'operator', 404, 'NOT_FOUND', {}],
        ['no API key', 'GET', (t) => `/v1/cells/cell1/tokens?token=${t}`, 'none', 401, 'UNAUTHENTICATED', {}],
        ['an agent on an operator route', 'GET', (t) => `/v1/cells?token=${t}`, 'agent', 403, 'FORBIDDEN', {}],
        ['a token as the cell', 'GET', (t) => `/v1/cells/${t}/tokens`, 'operator', 400, 'INVALID_INPUT', {}],
        ['a token as the token id', 'GET', (t) => `/v1/cells/cell1/tokens/${t}`, 'operator', 400, 'INVALID_INPUT', {}],
        ['a token as a query value', 'GET', (t) => `/v1/cells/cell1/tokens?token=${t}`, 'operator', 400, 'INVALID_INPUT', {}],
        ['a token as a query key', 'GET', (t) => `/v1/cells/cell1/tokens?${t}=1`, 'operator', 400, 'INVALID_INPUT', {}],
        [
          'a body too large',
          'POST',
          (t) => `/v1/cells/cell1/tokens?token=${t}`,
          'agent',
          413,
          'PAYLOAD_TOO_LARGE',
          { rawBody: JSON.stringify({ padding: 'x'.repeat(20_000) }), headers: { 'content-type': 'application/json' } },
        ],
        [
          'a body that is not JSON',
          'POST',
          (t) => `/v1/cells/cell1/tokens?token=${t}`,
          'agent',
          415,
          'UNSUPPORTED_MEDIA_TYPE',
          { rawBody: 'token=x', headers: { 'content-type': 'text/plain' } },
        ],
      ];

    it.each(requests)('answers %s with a fixed JSON error', async (_name, method, path, role, status, code, options) => {
      const key = role === 'none' ? undefined : role === 'agent' ? deployment.agentKeys.cell1 : deployment.operatorKey;
      const answer = await call(deployment.api.baseUrl, method, path(token), { key, ...options });
      expectError(answer, status, code);
      expectNoEcho(answer, token);
    });

    it('answers data as no-store and nosniff too', async () => {
      const answer = await call(deployment.api.baseUrl, 'GET', '/v1/cells/cell1/tokens', { key: deployment.operatorKey });
      expect(answer.status).toBe(200);
      expect(answer.headers.get('cache-control')).toBe('no-store');
      expect(answer.headers.get('x-content-type-options')).toBe('nosniff');
    });
  });

  (isChromiumAvailable() ? describe : describe.skip)('the noVNC page in Chromium', () => {
    let browser: Browser;

    beforeAll(async () => {
      browser = await launchBrowser();
    });

    afterAll(async () => {
      await browser?.close();
    });

    it('ignores host, port and encrypt in its link and connects to its own origin', async () => {
      const issued = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
        key: deployment.agentKeys.cell1,
        body: issueBody({ instanceUuid: randomUUID(), host: '127.0.0.1', port: upstream.port }),
      });
      expect(issued.status).toBe(201);
      const accessUrl = new URL(issued.body.accessUrl as string);
      expect(accessUrl.origin).toBe(proxy.httpBase);
      accessUrl.searchParams.set('host', 'evil.example');
      accessUrl.searchParams.set('port', '1');
      accessUrl.searchParams.set('encrypt', '1');

      const page = await browser.page();
      const sockets: string[] = [];
      page.on('websocket', (socket) => sockets.push(socket.url()));
      const connected = upstream.nextConnection();
      await page.goto(accessUrl.toString());
      // The proxy dialled the console: the browser's websocket reached this proxy with the token.
      await connected;
      const host = new URL(proxy.httpBase).host;
      // Chromium reports the websocket over CDP, possibly after the proxy has already dialled.
      await waitUntil(() => (sockets.length > 0 ? true : undefined), 5_000, 'the page to report its websocket');
      expect(sockets).toEqual([`ws://${host}/websockify?token=${issued.body.token}`]);
      await page.close();
    });

    // spice-html5's page is Debian's, not ours: it does read host and port from its link, so the
    // CSP connect-src of its own origin is what keeps it home.
    (existsSync(SPICE_AUTO_PAGE) ? it : it.skip)('the SPICE page cannot open a websocket to the host its link names', async () => {
      const page = await browser.page();
      const sockets: string[] = [];
      const refusedByPolicy: string[] = [];
      page.on('websocket', (socket) => sockets.push(socket.url()));
      page.on('console', (message) => {
        if (/Content Security Policy/.test(message.text())) {
          refusedByPolicy.push(message.text());
        }
      });
      await page.goto(`${proxy.httpBase}/spice_auto.html?host=evil.example&port=1&token=${token}`);
      await waitUntil(() => (refusedByPolicy.length > 0 ? true : undefined), 10_000, 'the CSP to refuse the connection');
      expect(refusedByPolicy.join('\n')).toContain('ws://evil.example:1');
      expect(sockets.filter((url) => !url.startsWith(`${proxy.wsBase}/`))).toEqual([]);
      await page.close();
    });
  });
});
