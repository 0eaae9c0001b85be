import { createHash, randomUUID } from 'node:crypto';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { fuzzSettings, Random, runFuzzCases } from '../support/fuzz';
import { ProxyProcess, startProxyProcess } from '../support/proxy-process';
import { exchangeRaw, RawAnswer } from '../support/raw-http';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { stopAfterTests, Teardown } from '../support/teardown';
import { call } from '../support/token-api';
import { connectConsole } from '../support/websocket-client';

/*
 * Fuzzes the console proxy's HTTP handshake, a process of its own on real PostgreSQL, over raw TCP:
 * request lines, paths, query strings and tokens, the websocket headers (Upgrade, Connection,
 * Sec-WebSocket-Key/Version/Protocol), Origin and Host, cookies, oversized and truncated heads, and
 * bytes that are no HTTP at all. Each answer must be one the README documents: 101 only for a
 * valid token in a valid handshake, a refusal with its status and the fixed JSON body (never the
 * request repeated), or a close within the header deadline; the process stays up, logs no token,
 * and serves a real session afterwards.
 *
 * Seeded and reproducible: KEYHOLE_FUZZ_SEED, KEYHOLE_FUZZ_CASES (default below).
 */

jest.setTimeout(120_000);

const SETTINGS = fuzzSettings(1_200);
const CONCURRENCY = 8;
const BUDGET_MS = 30_000;
/** The proxy's KEYHOLE_PROXY_HEADERS_TIMEOUT_MS here (its minimum): truncated heads get 408 after it. */
const HEADERS_TIMEOUT_MS = 500;
const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const CELL1_HOST = 'cell1.console.test:6080';
/**
 * What the proxy may answer (README, Console proxy): an upgrade or a refusal, its pages and probes,
 * and the fixed errors of plain HTTP. Not 5xx: the database is up and the proxy is not draining.
 */
const DOCUMENTED_STATUSES = new Set([101, 200, 304, 400, 401, 403, 404, 405, 408, 409, 429, 431]);

interface HandshakeCase {
  bytes: Buffer;
  /** The token the proxy will take (the last `token` query parameter, else the cookie), if any. */
  presented?: string;
  /** Everything in it that makes a websocket handshake valid, apart from the token and the origin. */
  validHandshake: boolean;
  /** The page origin, if any, is one the proxy must allow for the valid tokens. */
  originAllowed: boolean;
  /** A HEAD request: its answer has no body. */
  bodyless: boolean;
  /** Sends only part of a head: the header deadline must answer it. */
  truncated: boolean;
  /** No HTTP at all: a close without an answer is fine. */
  garbage: boolean;
  key?: string;
  markers: string[];
}

const teardown = new Teardown();
let deployment: TestDeployment;
let upstream: TcpUpstream;
let proxy: ProxyProcess;
/** Tokens the proxy must accept (novnc consoles at the echo upstream). */
const validTokens: string[] = [];
/** Tokens it must refuse: revoked, of another cell. */
const deadTokens: string[] = [];
const statusCounts = new Map<number | string, number>();

async function issue(cell = 'cell1'): Promise<{ id: number; token: string }> {
  const answer = await call(deployment.api.baseUrl, 'POST', `/v1/cells/${cell}/tokens`, {
    key: deployment.agentKeys[cell],
    body: { instanceUuid: randomUUID(), consoleType: 'novnc', host: '127.0.0.1', port: upstream.port },
  });
  expect(answer.status).toBe(201);
  return answer.body;
}

beforeAll(async () => {
  deployment = teardown.add(await startTestDeployment(), (started) => started.stop());
  upstream = teardown.add(await startTcpUpstream(echo));
  proxy = teardown.add(
    await startProxyProcess({
      KEYHOLE_CELL_NAME: 'cell1',
      KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
      KEYHOLE_PROXY_HEADERS_TIMEOUT_MS: String(HEADERS_TIMEOUT_MS),
    }),
    async (started) => {
      await started.stop();
    },
  );
  for (let count = 0; count < 4; count += 1) {
    validTokens.push((await issue()).token);
  }
  const revoked = await issue();
  expect(
    (await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/tokens/${revoked.id}`, { key: deployment.agentKeys.cell1 })).status,
  ).toBe(204);
  deadTokens.push(revoked.token, (await issue('cell2')).token);
}, 60_000);

stopAfterTests(teardown);

describe('console proxy handshake fuzzing', () => {
  it(`answers up to ${SETTINGS.cases} fuzzed handshakes (seed ${SETTINGS.seed}) only as documented, and still serves`, async () => {
    const ran = await runFuzzCases(SETTINGS, { concurrency: CONCURRENCY, budgetMs: BUDGET_MS }, async (random, index) => {
      const fuzzed = buildCase(random, index);
      const exchange = await exchangeRaw(proxy.port, fuzzed.bytes, {
        timeoutMs: HEADERS_TIMEOUT_MS + 5_000,
        chunks: fuzzed.truncated ? 1 : random.integer(1, 4),
        bodyless: fuzzed.bodyless,
      });
      try {
        checkExchange(fuzzed, exchange.answer, exchange);
      } catch (error) {
        const shown = fuzzed.bytes.toString('latin1');
        throw new Error(
          `handshake ${JSON.stringify(shown.length > 1_500 ? `${shown.slice(0, 1_500)}...(${shown.length} bytes)` : shown)}\n` +
            `${fuzzed.bytes.length} bytes, ${exchange.elapsedMs} ms; ` +
            `${exchange.answer ? `answer ${exchange.answer.status} ${JSON.stringify(exchange.answer.headers)} ${exchange.answer.body.slice(0, 300)}\n` : `no answer (${JSON.stringify(exchange)})\n`}${String(error)}`,
          { cause: error },
        );
      }
    });
    expect(ran).toBeGreaterThanOrEqual(Math.min(SETTINGS.cases, 300));
    // The mutations reached every decision: accepted, each refusal, the deadline.
    for (const status of [101, 200, 400, 401, 403, 404, 408]) {
      expect({ status, seen: (statusCounts.get(status) ?? 0) > 0 }).toEqual({ status, seen: true });
    }

    // Still up, and a real client gets a working console.
    expect(proxy.child.exitCode).toBeNull();
    const client = await connectConsole(`${proxy.wsBase}/websockify?token=${encodeURIComponent((await issue()).token)}`, {
      protocols: ['binary'],
    });
    expect((await client.roundTrip('still serving')).toString()).toBe('still serving');
    await client.close();
    // No token, valid or not, and nothing else of a request reached its log.
    const output = proxy.output();
    expect([...validTokens, ...deadTokens].filter((token) => output.includes(token))).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------

/** `text` as UTF-8 carries it: lone surrogates become U+FFFD. */
function wellFormed(text: string): string {
  return Buffer.from(text, 'utf8').toString('utf8');
}

function buildCase(random: Random, index: number): HandshakeCase {
  const markers: string[] = [];
  const newMarker = (): string => {
    const value = random.marker(index);
    markers.push(value);
    return value;
  };
  if (random.chance(0.03)) {
    // No HTTP at all: binary, a TLS ClientHello's first bytes, an HTTP/2 preface.
    const bytes = random.pick([
      () => random.bytes(random.integer(1, 400)),
      () => Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, ...random.bytes(40)]),
      () => Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1'),
    ])();
    return { bytes, validHandshake: false, originAllowed: false, truncated: false, garbage: true, bodyless: false, markers };
  }

  let validHandshake = true;
  const invalidate = <T>(value: T): T => {
    validHandshake = false;
    return value;
  };

  // The token, where the proxy looks for it.
  const tokenChoice = (): string =>
    random.weighted<() => string>([
      [5, () => random.pick(validTokens)],
      [2, () => random.pick(deadTokens)],
      [2, () => newMarker()],
      [1, () => random.stringOf('ABCDEFabcdef0123456789_-', 43)],
      [1, () => random.nastyString(60)],
      [0.5, () => 'x'.repeat(random.pick([300, 5_000]))],
      [0.5, () => ''],
    ])();
  const queryTokens: string[] = [];
  const queryParts: string[] = [];
  for (
    let count = random.weighted([
      [1, 0],
      [8, 1],
      [1, 2],
    ]);
    count > 0;
    count -= 1
  ) {
    const token = tokenChoice();
    queryTokens.push(token);
    queryParts.push(`token=${encodeURIComponent(wellFormed(token))}`);
  }
  if (random.chance(0.2)) {
    queryParts.splice(
      random.integer(0, queryParts.length),
      0,
      random.pick([`path=${newMarker()}`, `${newMarker()}=1`, '&&', '%zz', `token`, `a=${'b'.repeat(2_000)}`]),
    );
  }
  const cookieToken = random.chance(0.2) ? tokenChoice() : undefined;
  const query = queryParts.join('&');
  // The proxy's documented rule: the last `token` query parameter, else the (last) token cookie.
  const fromQuery = new URLSearchParams(query).getAll('token').at(-1);
  const presented = fromQuery || (cookieToken ? wellFormed(cookieToken) || undefined : undefined);

  const path = random.weighted<() => string>([
    [8, () => '/websockify'],
    [2, () => '/'],
    [1, () => '/serial'],
    [1, () => `/${newMarker()}`],
    [1, () => '/vnc_lite.html'],
    [0.5, () => '/healthz'],
    [0.5, () => '/../../etc/passwd'],
    [0.5, () => `/${'p'.repeat(random.pick([2_000, 9_000]))}`],
    [0.5, () => `http://${CELL1_HOST}/websockify`],
    [0.3, () => '*'],
    [0.3, () => `/${encodeURIComponent(wellFormed(random.nastyString(30)))}`],
  ])();
  const target = queryParts.length > 0 ? `${path}?${query}` : path;

  const method = random.chance(0.93) ? 'GET' : invalidate(random.pick(['POST', 'HEAD', 'PUT', 'OPTIONS', 'CONNECT', 'get', 'DELETE']));
  // RFC 6455 4.1 asks for HTTP 1.1 or higher, but Node (and so the proxy) upgrades an HTTP/1.0
  // request as well: lenient, harmless. What Node cannot parse is no handshake.
  const version = random.chance(0.97)
    ? 'HTTP/1.1'
    : random.pick([() => 'HTTP/2.0', () => 'HTTP/1.0', () => invalidate('HTTP/1.1x'), () => invalidate('')])();

  const headers: string[] = [];
  const key = Buffer.from(random.bytes(16)).toString('base64');
  const add = (name: string, value: string) => headers.push(`${name}: ${value}`);
  random.weighted<() => void>([
    [10, () => add('Host', `127.0.0.1:${proxy.port}`)],
    [2, () => add('Host', CELL1_HOST)],
    [1, () => undefined],
    [1, () => add('Host', random.pick([newMarker(), '[::1', 'a b', '']))],
    [0.5, () => (add('Host', CELL1_HOST), add('Host', 'evil.example'))],
  ])();
  random.weighted<() => void>([
    [10, () => add('Upgrade', random.pick(['websocket', 'WebSocket']))],
    [1, () => invalidate(undefined)],
    [1, () => add('Upgrade', invalidate(random.pick(['h2c', 'websocket2', '', 'websocket, h2c'])))],
  ])();
  random.weighted<() => void>([
    [10, () => add('Connection', random.pick(['Upgrade', 'keep-alive, Upgrade', 'upgrade']))],
    [1, () => invalidate(undefined)],
    [1, () => add('Connection', invalidate(random.pick(['close', 'keep-alive', ''])))],
  ])();
  random.weighted<() => void>([
    [10, () => add('Sec-WebSocket-Key', key)],
    [1, () => invalidate(undefined)],
    [1, () => add('Sec-WebSocket-Key', invalidate(random.pick(['not-a-valid-key', '', newMarker(), Buffer.alloc(15).toString('base64')])))],
    [0.5, () => (add('Sec-WebSocket-Key', key), add('Sec-WebSocket-Key', invalidate(key)))],
  ])();
  random.weighted<() => void>([
    [10, () => add('Sec-WebSocket-Version', '13')],
    [1, () => invalidate(undefined)],
    [1, () => add('Sec-WebSocket-Version', invalidate(random.pick(['12', '99', 'abc', '', '13, 8', '-13'])))],
  ])();
  random.weighted<() => void>([
    [4, () => undefined],
    [4, () => add('Sec-WebSocket-Protocol', random.pick(['binary', 'base64, binary', 'binary, base64', 'chat, binary']))],
    // No `binary` on offer (only websockify's old base64, or others): refused, as websockify does.
    [1, () => add('Sec-WebSocket-Protocol', invalidate(random.pick(['base64', 'chat', 'base64, chat'])))],
    [1, () => add('Sec-WebSocket-Protocol', invalidate(random.pick([',,', 'a b', 'binary,', `${'p,'.repeat(500)}p`, '"binary"'])))],
  ])();
  // No Origin (not a browser), or the page of the token's access URL (http://cell1.console.test) on its Host.
  let originAllowed = true;
  random.weighted<() => void>([
    [6, () => undefined],
    [2, () => ((originAllowed = headers.includes(`Host: ${CELL1_HOST}`)), add('Origin', 'http://cell1.console.test'))],
    [
      1,
      () => (
        (originAllowed = false),
        add('Origin', random.pick(['http://evil.example', 'https://cell1.console.test', 'null', '', `http://${newMarker()}`]))
      ),
    ],
  ])();
  if (cookieToken !== undefined) {
    add(
      'Cookie',
      random.pick([`token=${encodeURIComponent(wellFormed(cookieToken))}`, `a=b; token="${encodeURIComponent(wellFormed(cookieToken))}"`]),
    );
  }
  for (let count = random.integer(0, 2); count > 0; count -= 1) {
    random.pick<() => void>([
      () => add('X-Forwarded-For', random.pick([newMarker(), '1.2.3.4, junk', ','])),
      () => add('X-Forwarded-Proto', random.pick(['https', 'gopher', newMarker()])),
      () => add('Sec-WebSocket-Extensions', random.pick(['permessage-deflate', 'x; y=', newMarker()])),
      () => add('X-Large', 'x'.repeat(random.pick([1_000, 10_000, 20_000]))),
      () => add('X-Fuzz', [...random.nastyString(80)].map((character) => (/^[\x20-\x7e]$/.test(character) ? character : '?')).join('')),
    ])();
  }
  let head = `${method} ${target} ${version}\r\n${headers.join('\r\n')}\r\n\r\n`;
  let truncated = false;
  if (random.chance(0.03)) {
    // Part of a head, then silence: the deadline must answer it.
    head = head.slice(0, random.integer(1, head.length - 3));
    truncated = true;
  }
  if (random.chance(0.03)) {
    // A value that starts with a colon is still HTTP; bare line feeds and a NUL are not (Node refuses them).
    head = random.pick([
      () => invalidate(head.replace(/\r\n/g, '\n')),
      () => {
        // Host gets a value that starts with a colon: a page origin no longer matches it.
        originAllowed &&= !/\r\nOrigin:/.test(head);
        return head.replace('\r\nHost: ', '\r\nHost:: ');
      },
      () => invalidate(`${head.slice(0, 10)}\u0000${head.slice(10)}`),
    ])();
  }
  return {
    bytes: Buffer.from(head, 'latin1'),
    presented,
    validHandshake,
    originAllowed,
    truncated,
    garbage: false,
    bodyless: method === 'HEAD',
    key,
    markers,
  };
}

function checkExchange(
  fuzzed: HandshakeCase,
  answer: RawAnswer | undefined,
  exchange: { closedWithoutAnswer: boolean; timedOut: boolean; elapsedMs: number },
): void {
  // Whatever happens, it happens within the header deadline (plus the time to look a token up).
  expect(exchange.timedOut).toBe(false);
  expect(exchange.elapsedMs).toBeLessThan(HEADERS_TIMEOUT_MS + 3_000);
  // A valid handshake with a token the proxy must accept, from an allowed page: accepted, nothing else.
  const mustAccept =
    fuzzed.validHandshake &&
    fuzzed.originAllowed &&
    !fuzzed.truncated &&
    fuzzed.bytes.length < 16_000 &&
    fuzzed.presented !== undefined &&
    validTokens.includes(fuzzed.presented);
  expect({ mustAccept, status: answer?.status }).toEqual({ mustAccept, status: mustAccept ? 101 : answer?.status });
  if (!answer) {
    // A close (a CONNECT, bytes that are no HTTP, a head too large to read) is a documented end too.
    statusCounts.set('closed', (statusCounts.get('closed') ?? 0) + 1);
    return;
  }
  statusCounts.set(answer.status, (statusCounts.get(answer.status) ?? 0) + 1);
  expect({ status: answer.status, documented: DOCUMENTED_STATUSES.has(answer.status) }).toEqual({
    status: answer.status,
    documented: true,
  });
  if (fuzzed.truncated) {
    // A part of a head waits for the deadline, unless what came is already too large or malformed.
    expect([400, 408, 431]).toContain(answer.status);
  }
  if (answer.status === 408) {
    expect(exchange.elapsedMs).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 50);
  }
  if (answer.status === 101) {
    // Accepted: a token the proxy must accept, in a valid handshake, answered as RFC 6455 says.
    expect({
      presented: fuzzed.presented !== undefined && validTokens.includes(fuzzed.presented),
      valid: fuzzed.validHandshake,
      origin: fuzzed.originAllowed,
    }).toEqual({ presented: true, valid: true, origin: true });
    expect(answer.headers['sec-websocket-accept']).toBe(
      createHash('sha1')
        .update(fuzzed.key + WEBSOCKET_GUID)
        .digest('base64'),
    );
    return;
  }
  if (answer.status === 401) {
    // Refused as unknown: never a token the proxy must accept.
    expect(fuzzed.presented !== undefined && validTokens.includes(fuzzed.presented)).toBe(false);
  }
  for (const placed of fuzzed.markers) {
    expect(answer.body).not.toContain(placed);
  }
  if (answer.status >= 400) {
    // The proxy's one error shape: a fixed JSON body, never stored or sniffed.
    expect(answer.headers['content-type']).toMatch(/^application\/json/);
    expect(answer.headers['cache-control']).toBe('no-store');
    expect(answer.headers['x-content-type-options']).toBe('nosniff');
    if (!fuzzed.bodyless) {
      expect(JSON.parse(answer.body)).toEqual({ code: expect.stringMatching(/^[A-Z_]+$/), message: expect.any(String) });
    }
    if (fuzzed.presented !== undefined) {
      expect(answer.body).not.toContain(fuzzed.presented.slice(0, 40));
    }
  }
}
