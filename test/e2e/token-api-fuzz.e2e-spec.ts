import { startTestDeployment, TestDeployment } from '../support/deployment';
import { fuzzSettings, Random, runFuzzCases } from '../support/fuzz';
import { exchangeRaw, RawAnswer } from '../support/raw-http';
import { Teardown } from '../support/teardown';
import { call } from '../support/token-api';
import { QUIET_API_ENVIRONMENT, startTokenApiProcess, TokenApiProcess } from '../support/token-api-process';
import { queryDatabase } from '../support/databases';
import { sha256 } from './helpers';

/*
 * Fuzzes the token API, a process of its own on real PostgreSQL, through every route of the OpenAPI
 * document it serves: mutated JSON bodies (wrong types, bounds, huge and deep values, unicode and
 * NULs, duplicate and prototype-polluting keys, broken JSON), content types, query strings, path
 * parameters and headers, and now and then a request that is not valid HTTP at all. Each answer
 * must be one the document lists for the route (or one the README lists for every route: 400, 404
 * for an unknown route or method, 413, 415) with the error code the document names for that
 * status, the one error body, and nothing of the request repeated; 5xx only where documented. At
 * the end nothing was written but what a 201 answered, and the process still serves.
 *
 * Seeded and reproducible: KEYHOLE_FUZZ_SEED, KEYHOLE_FUZZ_CASES (default below).
 */

jest.setTimeout(120_000);

const SETTINGS = fuzzSettings(2_000);
const CONCURRENCY = 8;
const BUDGET_MS = 30_000;
const BODY_LIMIT_BYTES = 16_384;
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const;
/** Status and code of the errors the README documents for every request, whatever the route. */
const GENERIC_ERRORS: Record<number, string> = {
  400: 'INVALID_INPUT',
  404: 'NOT_FOUND',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
};
/** A database name no test creates: registering a cell on it cannot succeed. */
const ABSENT_DATABASE_URL = 'postgres://postgres@127.0.0.1:5432/keyhole_fuzz_absent_database';

interface JsonSchema {
  $ref?: string;
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  items?: JsonSchema;
  enum?: unknown[];
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  allOf?: JsonSchema[];
  pattern?: string;
  format?: string;
  const?: unknown;
}

interface Parameter {
  name: string;
  in: 'path' | 'query' | 'header';
  schema: JsonSchema;
}

interface Operation {
  method: string;
  path: string;
  parameters: Parameter[];
  bodySchema?: JsonSchema;
  responses: Record<string, { description: string; content?: Record<string, { schema: JsonSchema }> }>;
}

/** One request as the fuzzer built it, and the strings of it that no error may repeat. */
interface FuzzRequest {
  operation: Operation;
  method: string;
  target: string;
  headers: [string, string][];
  body?: Buffer;
  /** Overrides the whole request (not valid HTTP); `target` and the rest then only describe it. */
  raw?: Buffer;
  markers: string[];
  /** The instance of a refused issue request: no row may exist for it. */
  instanceUuid?: string;
  /** The path was changed beyond its parameters (case, slashes, segments): it may reach any route. */
  reshaped: boolean;
}

let deployment: TestDeployment;
let api: TokenApiProcess;
let apiPort: number;
let operations: Operation[];
let components: Record<string, JsonSchema>;
const teardown = new Teardown();
/** Token hashes of every 201 of the issue route. */
const issuedHashes = new Set<string>();
const issuedTokens: string[] = [];
/** Instances whose issue request was refused. */
const refusedInstances: string[] = [];
/** Markers placed where the API must not repeat or log them (path, query, headers). */
const loggedMarkers: string[] = [];
const statusCounts = new Map<number, number>();

beforeAll(async () => {
  deployment = teardown.add(await startTestDeployment(), (started) => started.stop());
  api = teardown.add(
    await startTokenApiProcess({ ...QUIET_API_ENVIRONMENT, KEYHOLE_DATABASE_URL: deployment.controlUrl, KEYHOLE_DB_POOL_SIZE: '8' }),
  );
  apiPort = Number(new URL(api.baseUrl).port);
  const document = await call(api.baseUrl, 'GET', '/v1/openapi.json');
  expect(document.status).toBe(200);
  components = document.body.components.schemas;
  operations = [];
  for (const [path, methods] of Object.entries(document.body.paths as Record<string, Record<string, Omit<Operation, 'method' | 'path'>>>)) {
    for (const [method, operation] of Object.entries(methods)) {
      const body = (operation as { requestBody?: { content: Record<string, { schema: JsonSchema }> } }).requestBody;
      operations.push({
        method: method.toUpperCase(),
        path,
        parameters: operation.parameters ?? [],
        bodySchema: body?.content['application/json']?.schema,
        responses: operation.responses,
      });
    }
  }
}, 60_000);

afterAll(async () => {
  await teardown.stopAll();
});

describe('token API fuzzing', () => {
  it(`answers up to ${SETTINGS.cases} fuzzed requests (seed ${SETTINGS.seed}) only as its OpenAPI document says, without repeating them`, async () => {
    expect(operations.length).toBeGreaterThanOrEqual(20);
    const ran = await runFuzzCases(SETTINGS, { concurrency: CONCURRENCY, budgetMs: BUDGET_MS }, async (random, index) => {
      const request = buildRequest(random, index);
      const exchange = await exchangeRaw(apiPort, request.raw ?? serialize(request), { timeoutMs: 10_000, chunks: random.integer(1, 3) });
      try {
        if (exchange.timedOut) {
          throw new Error(`no answer within 10 s`);
        }
        if (!exchange.answer) {
          // Only a request that is not valid HTTP (Transfer-Encoding with Content-Length is not
          // either) may be dropped without an answer, or one whose body is over the limit: the
          // answer and the close reach a client that is still sending as a reset.
          const invalid = request.raw !== undefined || request.headers.some(([name]) => name === 'Transfer-Encoding');
          const oversized = (request.body?.length ?? 0) > BODY_LIMIT_BYTES;
          expect({ closedWithoutAnswer: true, refusable: invalid || oversized }).toEqual({ closedWithoutAnswer: true, refusable: true });
          return;
        }
        statusCounts.set(exchange.answer.status, (statusCounts.get(exchange.answer.status) ?? 0) + 1);
        checkAnswer(request, exchange.answer);
      } catch (error) {
        throw new Error(
          `${describeRequest(request)}\n${exchange.answer ? `answer ${exchange.answer.status} ${exchange.answer.body.slice(0, 500)}\n` : ''}${String(error)}`,
          { cause: error },
        );
      }
    });
    expect(ran).toBeGreaterThanOrEqual(Math.min(SETTINGS.cases, 500));
    // The mutations reached the handlers, not only the parsers: successes and each kind of refusal.
    for (const status of [200, 201, 400, 401, 403, 404, 413, 415]) {
      expect({ status, seen: (statusCounts.get(status) ?? 0) > 0 }).toEqual({ status, seen: true });
    }
  });

  it('wrote nothing but the tokens it answered 201 for, each row complete, and still serves', async () => {
    for (const cellUrl of Object.values(deployment.cellUrls)) {
      const rows = await queryDatabase<{ token_hash: string; incomplete: boolean; instance_uuid: string }>(
        cellUrl,
        `SELECT token_hash, instance_uuid,
                (console_type IS NULL OR host IS NULL OR port IS NULL OR instance_uuid IS NULL OR expires IS NULL
                 OR access_url_base IS NULL OR created_at IS NULL) AS incomplete
           FROM console_auth_tokens`,
      );
      expect(rows.filter((row) => !issuedHashes.has(row.token_hash))).toEqual([]);
      expect(rows.filter((row) => row.incomplete)).toEqual([]);
      expect(rows.filter((row) => refusedInstances.includes(row.instance_uuid))).toEqual([]);
    }
    expect(issuedTokens.length).toBeGreaterThan(0);
    expect(api.process.hasExited()).toBe(false);
    expect((await call(api.baseUrl, 'GET', '/healthz')).status).toBe(200);
    const listed = await call(api.baseUrl, 'GET', '/v1/cells', { key: deployment.operatorKey });
    expect(listed.status).toBe(200);
    expect(listed.body.cells.map((cell: { name: string }) => cell.name)).toEqual(expect.arrayContaining(['cell1', 'cell2']));
    // Nothing of a path, query or header reached the log (its last 64 KiB: access lines name the route only).
    const output = api.process.output();
    expect(loggedMarkers.filter((marker) => output.includes(marker))).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------
// Building requests

/** Percent-encodes the UTF-8 of `text` (lone surrogates become U+FFFD, as any client sends them). */
function encode(text: string): string {
  return [...Buffer.from(text, 'utf8')]
    .map((byte) =>
      /[A-Za-z0-9_.~-]/.test(String.fromCharCode(byte))
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`,
    )
    .join('');
}

function uuid(random: Random): string {
  const hex = random.stringOf('0123456789abcdef', 32);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-${random.pick(['8', '9', 'a', 'b'])}${hex.slice(17, 20)}-${hex.slice(20)}`;
}

function buildRequest(random: Random, index: number): FuzzRequest {
  const markers: string[] = [];
  const newMarker = (): string => {
    const value = random.marker(index);
    markers.push(value);
    return value;
  };
  const picked = random.pick(operations);
  const method = random.chance(0.06) ? random.pick(METHODS) : picked.method;
  // Another method may be another documented operation of the same path: its rules apply then.
  const operation = operations.find((candidate) => candidate.path === picked.path && candidate.method === method) ?? picked;
  const { target, reshaped } = buildTarget(random, operation, newMarker);
  const headers = buildHeaders(random, operation, newMarker);
  const request: FuzzRequest = { operation, method, target, headers, markers, reshaped };
  const wantsBody = operation.bodySchema !== undefined ? random.chance(0.95) : random.chance(0.08);
  if (wantsBody) {
    const { text, contentType, instanceUuid } = buildBody(random, operation, newMarker);
    request.body = Buffer.from(text, 'utf8');
    if (contentType !== undefined) {
      headers.push(['Content-Type', contentType]);
    }
    request.instanceUuid = instanceUuid;
  }
  loggedMarkers.push(...markers);
  if (random.chance(0.04)) {
    request.raw = brokenHttp(random, request);
  }
  return request;
}

/** The path with each parameter valid, absent, mutated or a marker, and a query string likewise. */
function buildTarget(random: Random, operation: Operation, newMarker: () => string): { target: string; reshaped: boolean } {
  let path = operation.path;
  for (const parameter of operation.parameters.filter((candidate) => candidate.in === 'path')) {
    const value = random.weighted<() => string>([
      [8, () => encode(validValue(random, parameter, operation))],
      [1, () => encode(newMarker())],
      [1, () => encode(random.nastyString(40))],
      [0.5, () => random.pick(['', '%', '%2F', '..', '%2e%2e', '%00', 'a/b', ';x', '%E0%A4%A'])],
      [0.5, () => 'a'.repeat(random.pick([64, 300, 5_000, 9_000]))],
      [0.5, () => String(random.edgeNumber())],
    ])();
    path = path.replace(`{${parameter.name}}`, value);
  }
  const reshaped = random.chance(0.05);
  if (reshaped) {
    path = random.pick([path.toUpperCase(), `${path}/`, `${path}//`, path.replace('/v1/', '/v2/'), `${path}/extra`, `/${path}`]);
  }
  const pairs: string[] = [];
  for (const parameter of operation.parameters.filter((candidate) => candidate.in === 'query')) {
    if (random.chance(0.4)) {
      pairs.push(`${parameter.name}=${encode(random.chance(0.6) ? validValue(random, parameter, operation) : random.nastyString(30))}`);
    }
  }
  if (random.chance(0.25)) {
    const extra = random.weighted<() => string>([
      [2, () => `${newMarker()}=1`],
      [2, () => `token=${newMarker()}`],
      [1, () => newMarker()],
      [1, () => `limit=${newMarker()}&limit=1`],
      [1, () => `${encode(random.nastyString(20))}=${encode(random.nastyString(20))}`],
      [1, () => `a[b]=${newMarker()}&__proto__[x]=1&constructor[prototype][y]=2`],
      [0.5, () => `q=${'x'.repeat(random.pick([1_000, 20_000]))}`],
      [0.5, () => '&&=&=='],
      [0.5, () => `%zz=${newMarker()}`],
    ])();
    pairs.push(extra);
  }
  return { target: pairs.length > 0 ? `${path}?${pairs.join('&')}` : path, reshaped };
}

/** A value the parameter's schema accepts, from the deployment where it matters (cells, keys). */
function validValue(random: Random, parameter: Parameter, operation: Operation): string {
  const schema = parameter.schema;
  if (parameter.name === 'cell') {
    // Never unregister the deployment's own cells: every later case would fail for that alone.
    const destructive = operation.method === 'DELETE' && operation.path === '/v1/cells/{cell}';
    return random.pick(destructive ? ['cell9', 'cell-x'] : ['cell1', 'cell1', 'cell2', 'cell9']);
  }
  if (schema.enum) {
    return String(random.pick(schema.enum));
  }
  if (schema.format === 'uuid') {
    return uuid(random);
  }
  if (schema.type === 'integer') {
    return String(random.integer(1, 300));
  }
  if (schema.pattern === '^[0-9]{1,4}$') {
    return String(random.integer(1, 1_000));
  }
  if (schema.pattern === '^[0-9a-f]{16}$') {
    return random.stringOf('0123456789abcdef', 16);
  }
  return random.nastyString(10);
}

function buildHeaders(random: Random, operation: Operation, newMarker: () => string): [string, string][] {
  const headers: [string, string][] = [['Host', '127.0.0.1']];
  const authorization = random.weighted<() => string | undefined>([
    [9, () => `Bearer ${deployment.operatorKey}`],
    [4, () => `Bearer ${deployment.agentKeys.cell1}`],
    [1, () => `Bearer ${deployment.agentKeys.cell2}`],
    [2, () => undefined],
    [1, () => `Bearer ${newMarker()}`],
    [1, () => `Bearer khk_0123456789abcdef_${newMarker()}`],
    [1, () => `Basic ${Buffer.from(`x:${newMarker()}`).toString('base64')}`],
    [1, () => newMarker()],
    [0.5, () => `Bearer ${'A'.repeat(random.pick([200, 4_000, 15_000]))}`],
    [0.5, () => `bearer  ${deployment.operatorKey} extra`],
    [0.5, () => 'Bearer'],
  ])();
  if (authorization !== undefined) {
    headers.push(['Authorization', authorization]);
    if (random.chance(0.03)) {
      headers.push(['Authorization', `Bearer ${newMarker()}`]);
    }
  }
  if (operation.parameters.some((parameter) => parameter.name === 'Keyhole-Object-Version') || random.chance(0.05)) {
    if (random.chance(0.3)) {
      headers.push(['Keyhole-Object-Version', random.pick(['1.0', '1.2', '1.4', '1.5', '2.0', '', '1', 'latest', newMarker()])]);
    }
  }
  const extras: (() => [string, string])[] = [
    () => ['X-Forwarded-For', random.pick([newMarker(), '1.2.3.4, ::1, junk', '999.1.1.1', ', , ,', '::ffff:127.0.0.1'])],
    () => ['X-Forwarded-Proto', random.pick(['https', 'gopher', newMarker()])],
    // A well-formed id is echoed by design; an ill-formed one (a space) must not be.
    () => ['X-Request-Id', random.pick(['ok-id.1', '', ' ', 'a'.repeat(65), 'bad id', `${newMarker()} x`])],
    () => ['Accept', random.pick(['text/html', 'application/xml', '*/*', 'application/json;q=0'])],
    () => ['Accept-Encoding', random.pick(['gzip', 'br, zstd', 'identity;q=0'])],
    () => ['X-Fuzz', latin1(random.nastyString(200))],
    () => ['X-Large', 'x'.repeat(random.pick([1_000, 8_000, 20_000]))],
    () => ['Cookie', `token=${newMarker()}`],
    () => ['Expect', '100-continue'],
    () => ['Transfer-Encoding', 'identity'],
  ];
  for (let count = random.integer(0, 3); count > 0; count -= 1) {
    headers.push(random.pick(extras)());
  }
  return headers;
}

/** A header value HTTP can carry (visible ASCII and latin1, no CR/LF), keeping what it can of `text`. */
function latin1(text: string): string {
  return [...text].map((character) => (/^[\x20-\x7e\x80-\xff\t]$/.test(character) ? character : '?')).join('');
}

/** A valid body for the operation, to be mutated. */
function validBody(random: Random, operation: Operation): Record<string, unknown> {
  switch (`${operation.method} ${operation.path}`) {
    case 'POST /v1/cells/{cell}/tokens':
      return {
        instanceUuid: uuid(random),
        consoleType: random.pick(['novnc', 'spice-html5', 'serial']),
        host: random.pick(['192.0.2.10', 'compute-7.example', '2001:db8::7']),
        port: random.integer(1, 65_535),
        ...(random.chance(0.3) ? { ttlSeconds: random.integer(1, 86_400) } : {}),
        ...(random.chance(0.2) ? { tlsPort: random.chance(0.5) ? null : random.integer(1, 65_535) } : {}),
        ...(random.chance(0.2) ? { internalAccessPath: random.pick([null, 'abc-123', '/x?y=1']) } : {}),
      };
    case 'POST /v1/cells/{cell}/tokens/purge':
      return random.chance(0.5) ? { host: '192.0.2.10' } : {};
    case 'POST /v1/tokens/introspect':
      return {
        token: issuedTokens.length > 0 && random.chance(0.5) ? random.pick(issuedTokens) : random.stringOf('abcdefABCDEF0123456789_-', 43),
        ...(random.chance(0.3) ? { cell: random.pick(['cell1', 'cell2', 'cell9']) } : {}),
      };
    case 'PUT /v1/cells/{cell}/legacy-fallback':
      return { enabled: random.chance(0.5) };
    case 'POST /v1/cells':
      return {
        name: `fz-${random.stringOf('abcdef0123456789', 8)}`,
        databaseUrl: ABSENT_DATABASE_URL,
        proxyUrl: 'http://fz.console.test:6080',
      };
    case 'POST /v1/credentials':
      return {
        name: `fuzz ${random.integer(1, 1e6)}`,
        role: random.pick(['agent', 'operator']),
        cell: random.pick(['cell1', 'cell2', null]),
      };
    default:
      return {};
  }
}

/** A body: the valid one mutated, or something else entirely, with a content type to match or not. */
function buildBody(
  random: Random,
  operation: Operation,
  newMarker: () => string,
): { text: string; contentType?: string; instanceUuid?: string } {
  const body = validBody(random, operation);
  const fields = Object.keys(schemaOf(operation.bodySchema)?.properties ?? body);
  const mutations = random.integer(0, 3);
  for (let count = 0; count < mutations; count += 1) {
    const field = fields.length > 0 ? random.pick(fields) : 'x';
    random.weighted<() => void>([
      [4, () => (body[field] = random.jsonValue())],
      [2, () => delete body[field]],
      [2, () => (body[field] = newMarker())],
      [1, () => (body[random.pick(['extra', 'isOperator', 'role', 'cell'])] = newMarker())],
      [1, () => (body[field] = random.edgeNumber())],
      [1, () => (body[field] = 'x'.repeat(random.pick([255, 256, 1_024, 1_025, 5_000])))],
      [1, () => (body[field] = `a\u0000b${newMarker()}`)],
      [1, () => (body[field] = random.nastyString(100))],
    ])();
  }
  let text = JSON.stringify(body);
  text = random.weighted<() => string>([
    [14, () => text],
    [1, () => `{"${random.pick(['__proto__', 'constructor', 'prototype'])}": {"prototype": {"isOperator": true}}, ${text.slice(1)}`],
    [1, () => `{"constructor": {"prototype": {"role": "operator"}}, "__proto__": {"x": 1}}`],
    [1, () => (fields.length > 0 ? `{"${random.pick(fields)}": ${JSON.stringify(newMarker())}, ${text.slice(1)}` : text)],
    [1, () => `${'['.repeat(random.pick([100, 5_000, 16_000]))}${']'.repeat(random.chance(0.5) ? 0 : 100)}`],
    [1, () => `{"a":${'{"a":'.repeat(2_000)}1${'}'.repeat(2_001)}`],
    [1, () => text.slice(0, random.integer(0, text.length))],
    [1, () => `${text.slice(0, -1)},}`],
    [1, () => random.pick(['NaN', 'null', '[]', '"x"', '1e999', 'true', '\u0000', '\ufeff{}', '{"a":1}{"b":2}', '{"port":1e400}'])],
    [
      1,
      () =>
        `${text.slice(0, -1)}${text.length > 2 ? ',' : ''}"pad":"${'p'.repeat(BODY_LIMIT_BYTES - text.length + random.integer(-40, 40))}"}`,
    ],
    [0.5, () => `{"pad":"${'p'.repeat(random.pick([100_000, 1_000_000]))}"}`],
    [0.5, () => JSON.stringify(random.jsonValue(4))],
    [0.5, () => `{"host":"${'\\ud800'.repeat(10)}","port":"\\u0000"}`],
  ])();
  const contentType = random.weighted<() => string | undefined>([
    [20, () => 'application/json'],
    [1, () => undefined],
    [1, () => 'text/plain'],
    [1, () => 'application/json; charset=utf-8'],
    [
      1,
      () => random.pick(['application/json; charset=latin1', 'application/json; charset=utf-16le', 'application/json; charset="utf-32"']),
    ],
    [
      1,
      () =>
        random.pick([
          'APPLICATION/JSON',
          'application/json-patch+json',
          'application/x-www-form-urlencoded',
          'multipart/form-data; boundary=x',
        ]),
    ],
    [0.5, () => random.pick(['', ';', 'application/json;;;', `application/json; ${newMarker()}`])],
  ])();
  const instanceUuid = typeof body.instanceUuid === 'string' && /^[0-9a-f-]{36}$/.test(body.instanceUuid) ? body.instanceUuid : undefined;
  return { text, contentType, instanceUuid };
}

/**
 * The request as HTTP/1.1 bytes, with the right Content-Length, on a keep-alive connection: the
 * server then reads (or skips) a body it answered before reading, where a close with unread bytes
 * would be a reset that can overtake the answer.
 */
function serialize(request: FuzzRequest): Buffer {
  const head = [`${request.method} ${request.target} HTTP/1.1`, ...request.headers.map(([name, value]) => `${name}: ${value}`)];
  if (request.body !== undefined) {
    head.push(`Content-Length: ${request.body.length}`);
  }
  head.push('', '');
  return Buffer.concat([Buffer.from(head.join('\r\n'), 'latin1'), request.body ?? Buffer.alloc(0)]);
}

/** The request made into something that is not valid HTTP/1.1, in one of the ways clients and attackers do. */
function brokenHttp(random: Random, request: FuzzRequest): Buffer {
  const valid = serialize(request).toString('latin1');
  const headEnd = valid.indexOf('\r\n\r\n');
  const [requestLine, ...headerLines] = valid.slice(0, headEnd).split('\r\n');
  const body = valid.slice(headEnd + 4);
  const broken = random.weighted<() => string>([
    [
      1,
      () =>
        `${requestLine.replace('HTTP/1.1', random.pick(['HTTP/9.9', 'HTTP/1', 'http/1.1', 'HTTP/1.1 x']))}\r\n${headerLines.join('\r\n')}\r\n\r\n${body}`,
    ],
    [1, () => `${requestLine.replace(' ', random.pick(['  ', '\t', ' \u0000']))}\r\n${headerLines.join('\r\n')}\r\n\r\n${body}`],
    [1, () => `${requestLine}\r\nBad Header: x\r\n${headerLines.join('\r\n')}\r\n\r\n${body}`],
    [1, () => `${requestLine}\r\nX-Nul: a\u0000b\r\n${headerLines.join('\r\n')}\r\n\r\n${body}`],
    [1, () => `${requestLine}\r\n folded: continuation\r\n${headerLines.join('\r\n')}\r\n\r\n${body}`],
    [
      1,
      () =>
        `${requestLine}\r\nContent-Length: 5\r\nContent-Length: 7\r\n${headerLines.filter((line) => !/^content-length/i.test(line)).join('\r\n')}\r\n\r\n${body}`,
    ],
    [
      1,
      () =>
        `${requestLine}\r\nContent-Length: -1\r\n${headerLines.filter((line) => !/^content-length/i.test(line)).join('\r\n')}\r\n\r\n${body}`,
    ],
    [1, () => `${requestLine}\r\nTransfer-Encoding: chunked\r\n${headerLines.join('\r\n')}\r\n\r\nzz\r\n${body}`],
    [1, () => `${requestLine}\r\nX-Huge: ${'h'.repeat(20_000)}\r\n${headerLines.join('\r\n')}\r\n\r\n${body}`],
    [1, () => valid.replace(/\r\n/g, '\n')],
    [1, () => `${requestLine.toLowerCase()}\r\n${headerLines.join('\r\n')}\r\n\r\n${body}`],
    [1, () => random.bytes(random.integer(1, 300)).toString('latin1')],
  ])();
  return Buffer.from(broken, 'latin1');
}

// ---------------------------------------------------------------------------------------------
// Checking answers

function describeRequest(request: FuzzRequest): string {
  const shown = (request.raw ?? serialize(request)).toString('latin1');
  return `request (${request.operation.method} ${request.operation.path}${request.raw ? ', not valid HTTP' : ''}):\n${JSON.stringify(shown.length > 1_500 ? `${shown.slice(0, 1_500)}...(${shown.length} bytes)` : shown)}`;
}

function schemaOf(schema: JsonSchema | undefined): JsonSchema | undefined {
  return schema?.$ref ? components[schema.$ref.replace('#/components/schemas/', '')] : schema;
}

/**
 * The documented answers of every operation whose path template the request's path matches (as
 * the router does: letter case and one trailing slash aside), for the request's method. A path
 * may match more than one (`/tokens/purge` is also `/tokens/{id}`), or none (then only the generic
 * errors apply).
 */
function documentedResponses(request: FuzzRequest): [string, Operation['responses'][string]][] {
  const segments = request.target
    .split('?')[0]
    .replace(/(.)\/$/, '$1')
    .split('/');
  const matches = (template: string): boolean => {
    const parts = template.split('/');
    return (
      parts.length === segments.length &&
      parts.every((part, position) =>
        part.startsWith('{') ? segments[position] !== '' : part.toLowerCase() === segments[position].toLowerCase(),
      )
    );
  };
  return operations
    .filter((operation) => operation.method === request.method && matches(operation.path))
    .flatMap((operation) => Object.entries(operation.responses));
}

/** The (status, code) pairs this request may be answered with. */
function allowedErrors(request: FuzzRequest): { status: number; codes: RegExp }[] {
  const allowed = Object.entries(GENERIC_ERRORS).map(([status, code]) => ({ status: Number(status), codes: new RegExp(`^${code}$`) }));
  for (const [status, response] of documentedResponses(request)) {
    if (Number(status) >= 400) {
      // The document names each code a status may carry in its description.
      const codes = response.description.match(/\b[A-Z]+(?:_[A-Z]+)+\b|\b[A-Z]{4,}\b/g) ?? [];
      allowed.push({ status: Number(status), codes: new RegExp(`^(${codes.join('|')})$`) });
    }
  }
  return allowed;
}

function isIssue(request: FuzzRequest): boolean {
  return request.operation.path === '/v1/cells/{cell}/tokens' && request.method === 'POST';
}

function checkAnswer(request: FuzzRequest, answer: RawAnswer): void {
  const documented = documentedResponses(request).find(([status]) => status === String(answer.status))?.[1];
  if (answer.status < 400) {
    // A success must be the route's own, documented, and of the documented shape.
    expect({ success: answer.status, documented: documented !== undefined, raw: request.raw !== undefined }).toEqual({
      success: answer.status,
      documented: true,
      raw: request.raw !== undefined,
    });
    const schema = documented?.content?.['application/json']?.schema;
    if (schema && !request.reshaped) {
      expect(answer.headers['content-type']).toMatch(/^application\/json/);
      expect(schemaErrors(schema, JSON.parse(answer.body), '$')).toEqual([]);
    }
    if (isIssue(request) && answer.status === 201) {
      const token = (JSON.parse(answer.body) as { token: string }).token;
      issuedHashes.add(sha256(token));
      issuedTokens.push(token);
    }
    return;
  }
  if (request.instanceUuid !== undefined && isIssue(request)) {
    refusedInstances.push(request.instanceUuid);
  }
  // Every error: a documented status with a code the document names for it, in the one error shape.
  const allowed = allowedErrors(request);
  const body = JSON.parse(answer.body) as Record<string, unknown>;
  const match = allowed.find((entry) => entry.status === answer.status && entry.codes.test(String(body.code)));
  expect({ status: answer.status, code: body.code, documented: match !== undefined }).toEqual({
    status: answer.status,
    code: body.code,
    documented: true,
  });
  expect(schemaErrors({ $ref: '#/components/schemas/Error' }, body, '$')).toEqual([]);
  expect(Object.keys(body).filter((key) => !['code', 'message', 'details', 'requestId'].includes(key))).toEqual([]);
  expect(answer.headers['content-type']).toMatch(/^application\/json/);
  expect(answer.headers['cache-control']).toBe('no-store');
  expect(answer.headers['x-content-type-options']).toBe('nosniff');
  if (answer.headers['x-request-id'] !== undefined) {
    expect(answer.headers['x-request-id']).toBe(body.requestId);
  }
  // Never the request back: no marker from the path, query, headers or body values.
  expect(request.markers.filter((placed) => answer.body.includes(placed))).toEqual([]);
}

/** Where `value` breaks `schema` (a small JSON Schema subset: what the document uses). */
function schemaErrors(schema: JsonSchema, value: unknown, at: string): string[] {
  const resolved = schemaOf(schema)!;
  if (resolved.anyOf || resolved.oneOf) {
    const options = (resolved.anyOf ?? resolved.oneOf)!;
    return options.some((option) => schemaErrors(option, value, at).length === 0) ? [] : [`${at}: matches none of its options`];
  }
  if (resolved.allOf) {
    return resolved.allOf.flatMap((part) => schemaErrors(part, value, at));
  }
  if (resolved.const !== undefined && value !== resolved.const) {
    return [`${at}: not ${JSON.stringify(resolved.const)}`];
  }
  if (resolved.enum && !resolved.enum.includes(value)) {
    return [`${at}: ${JSON.stringify(value)} not one of ${JSON.stringify(resolved.enum)}`];
  }
  const types = resolved.type === undefined ? undefined : [resolved.type].flat();
  if (types && !types.some((type) => hasType(value, type))) {
    return [`${at}: ${JSON.stringify(value)?.slice(0, 80)} is not ${types.join('|')}`];
  }
  const errors: string[] = [];
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    for (const key of resolved.required ?? []) {
      if (!(key in value)) {
        errors.push(`${at}.${key}: missing`);
      }
    }
    for (const [key, child] of Object.entries(value)) {
      const property = resolved.properties?.[key];
      if (property) {
        errors.push(...schemaErrors(property, child, `${at}.${key}`));
      } else if (resolved.additionalProperties === false) {
        errors.push(`${at}.${key}: not in the document`);
      }
    }
  }
  if (Array.isArray(value) && resolved.items) {
    value.forEach((item, position) => errors.push(...schemaErrors(resolved.items!, item, `${at}[${position}]`)));
  }
  return errors;
}

function hasType(value: unknown, type: string): boolean {
  switch (type) {
    case 'null':
      return value === null;
    case 'integer':
      return Number.isInteger(value);
    case 'number':
      return typeof value === 'number';
    case 'array':
      return Array.isArray(value);
    case 'object':
      return typeof value === 'object' && value !== null && !Array.isArray(value);
    default:
      return typeof value === type;
  }
}
