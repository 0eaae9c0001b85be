import { randomUUID } from 'node:crypto';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { call } from '../support/token-api';
import { ApiResponse, countTokenRows, expectError, invalidFields, issueBody, keyParts, randomSecret, withoutRequestId } from './helpers';

/*
 * Every error code of the token API and its access rules, as a client sees them: status, stable
 * code, the one body shape, the request id, and that a refused request changes nothing.
 */

const BODY_LIMIT_BYTES = 16_384;

describe('token API: errors and access rules', () => {
  let deployment: TestDeployment;
  let base: string;
  /** Tokens the successful issue calls of this file created, per cell. */
  const issuedPerCell: Record<string, number> = { cell1: 0, cell2: 0 };

  // Databases cloned, migrations checked, the API booted: more than jest's default 5 s on a loaded machine.
  beforeAll(async () => {
    deployment = await startTestDeployment();
    base = deployment.api.baseUrl;
  }, 30_000);

  afterAll(async () => {
    await deployment?.stop();
  });

  async function issueOk(cell: string, key = deployment.agentKeys[cell], body = issueBody()): Promise<{ id: number; token: string }> {
    const response = await call(base, 'POST', `/v1/cells/${cell}/tokens`, { key, body });
    expect(response.status).toBe(201);
    issuedPerCell[cell] += 1;
    return response.body;
  }

  async function createCredential(body: Record<string, unknown>): Promise<{ id: string; key: string }> {
    const response = await call(base, 'POST', '/v1/credentials', { key: deployment.operatorKey, body });
    expect(response.status).toBe(201);
    return { id: response.body.credential.id, key: response.body.key };
  }

  describe('401 UNAUTHENTICATED', () => {
    it('answers a missing, malformed, unknown, wrong, revoked or non-bearer key with one identical body', async () => {
      const revocable = await createCredential({ name: 'soon revoked', role: 'operator' });
      expect((await call(base, 'GET', '/v1/cells', { key: revocable.key })).status).toBe(200);
      const revoke = await call(base, 'DELETE', `/v1/credentials/${revocable.id}`, { key: deployment.operatorKey });
      expect(revoke.status).toBe(204);

      const operatorId = keyParts(deployment.operatorKey).id;
      const attempts: [string, Record<string, string>][] = [
        ['no Authorization header', {}],
        ['Bearer garbage', { authorization: 'Bearer garbage' }],
        ['a well-formed key with an unknown id', { authorization: `Bearer khk_0123456789abcdef_${randomSecret()}` }],
        ['a known id with a wrong secret', { authorization: `Bearer khk_${operatorId}_${randomSecret()}` }],
        ['a revoked key, on the very next request', { authorization: `Bearer ${revocable.key}` }],
        ['Basic credentials', { authorization: `Basic ${Buffer.from(`operator:${deployment.operatorKey}`).toString('base64')}` }],
        ['a key without the Bearer scheme', { authorization: deployment.operatorKey }],
      ];
      const answers: [string, ApiResponse][] = [];
      for (const [name, headers] of attempts) {
        answers.push([name, await call(base, 'GET', '/v1/cells/cell1/tokens', { headers })]);
      }

      const reference = withoutRequestId(answers[0][1].body);
      expect(reference).toEqual({ code: 'UNAUTHENTICATED', message: expect.any(String) });
      for (const [name, answer] of answers) {
        expectError(answer, 401, 'UNAUTHENTICATED');
        expect({ name, body: withoutRequestId(answer.body) }).toEqual({ name, body: reference });
      }
      // Every request id is its own.
      expect(new Set(answers.map(([, answer]) => answer.body.requestId)).size).toBe(answers.length);
      // The revoked key stays refused on an agent endpoint too.
      expectError(await call(base, 'POST', '/v1/cells/cell1/tokens', { key: revocable.key, body: issueBody() }), 401, 'UNAUTHENTICATED');
    });
  });

  describe('403 FORBIDDEN', () => {
    it('refuses an agent key on operator endpoints', async () => {
      const agent = deployment.agentKeys.cell1;
      const refused: [string, string, unknown?][] = [
        ['GET', '/v1/cells/cell1/tokens'],
        ['GET', '/v1/cells/cell1/tokens/1'],
        ['POST', '/v1/tokens/introspect', { token: 'x'.repeat(43) }],
        ['POST', '/v1/cells', { name: 'agent-made', databaseUrl: deployment.cellUrls.cell1, proxyUrl: 'http://agent-made.test' }],
        ['DELETE', '/v1/cells/cell2'],
        ['GET', '/v1/credentials'],
        ['POST', '/v1/credentials', { name: 'escalation', role: 'operator' }],
        ['DELETE', `/v1/credentials/${keyParts(deployment.operatorKey).id}`],
      ];
      for (const [method, path, body] of refused) {
        const answer = await call(base, method, path, { key: agent, body });
        expectError(answer, 403, 'FORBIDDEN');
      }
      const cells = await call(base, 'GET', '/v1/cells', { key: deployment.operatorKey });
      expect(cells.body.cells.map((cell: { name: string }) => cell.name).sort()).toEqual(['cell1', 'cell2']);
      // The operator key the agent tried to revoke still works.
      expect(cells.status).toBe(200);
    });

    it('refuses an agent of cell1 anything in cell2, and changes nothing there', async () => {
      const victim = await issueOk('cell2');
      const agent = deployment.agentKeys.cell1;
      const rows = await countTokenRows(deployment.cellUrls.cell2);
      const refused: [string, string, unknown?][] = [
        ['POST', '/v1/cells/cell2/tokens', issueBody()],
        ['DELETE', `/v1/cells/cell2/tokens/${victim.id}`],
        ['DELETE', `/v1/cells/cell2/instances/${randomUUID()}/tokens`],
        ['POST', '/v1/cells/cell2/tokens/purge', { host: '192.0.2.10' }],
      ];
      for (const [method, path, body] of refused) {
        const answer = await call(base, method, path, { key: agent, body });
        expectError(answer, 403, 'FORBIDDEN');
        expect(answer.body.details).toEqual({ cell: 'cell2' });
      }
      expect(await countTokenRows(deployment.cellUrls.cell2)).toBe(rows);
      const stillValid = await call(base, 'POST', '/v1/tokens/introspect', { key: deployment.operatorKey, body: { token: victim.token } });
      expect(stillValid.status).toBe(200);
    });

    it('confines an operator scoped to cell1 to cell1', async () => {
      const scoped = await createCredential({ name: 'cell1 operator', role: 'operator', cell: 'cell1' });
      expect((await call(base, 'GET', '/v1/cells/cell1/tokens', { key: scoped.key })).status).toBe(200);
      const ownCells = await call(base, 'GET', '/v1/cells', { key: scoped.key });
      expect(ownCells.body.cells.map((cell: { name: string }) => cell.name)).toEqual(['cell1']);

      expectError(await call(base, 'GET', '/v1/cells/cell2/tokens', { key: scoped.key }), 403, 'FORBIDDEN');
      expectError(await call(base, 'GET', '/v1/cells/cell2', { key: scoped.key }), 403, 'FORBIDDEN');
      const register = await call(base, 'POST', '/v1/cells', {
        key: scoped.key,
        body: { name: 'scoped-made', databaseUrl: deployment.cellUrls.cell1, proxyUrl: 'http://scoped-made.test' },
      });
      expectError(register, 403, 'FORBIDDEN');
      expectError(await call(base, 'DELETE', '/v1/cells/cell2', { key: scoped.key }), 403, 'FORBIDDEN');
      expectError(
        await call(base, 'POST', '/v1/credentials', { key: scoped.key, body: { name: 'x', role: 'agent', cell: 'cell2' } }),
        403,
        'FORBIDDEN',
      );
      expectError(
        await call(base, 'POST', '/v1/credentials', { key: scoped.key, body: { name: 'x', role: 'operator' } }),
        403,
        'FORBIDDEN',
      );

      const cells = await call(base, 'GET', '/v1/cells', { key: deployment.operatorKey });
      expect(cells.body.cells.map((cell: { name: string }) => cell.name).sort()).toEqual(['cell1', 'cell2']);
    });
  });

  describe('404', () => {
    it('answers CELL_NOT_FOUND for an unknown cell on issue, list, revoke-instance and purge', async () => {
      const key = deployment.operatorKey;
      const attempts: [string, string, unknown?][] = [
        ['POST', '/v1/cells/cell9/tokens', issueBody()],
        ['GET', '/v1/cells/cell9/tokens'],
        ['GET', '/v1/cells/cell9/tokens/1'],
        ['DELETE', '/v1/cells/cell9/tokens/1'],
        ['DELETE', `/v1/cells/cell9/instances/${randomUUID()}/tokens`],
        ['POST', '/v1/cells/cell9/tokens/purge', {}],
        ['GET', '/v1/cells/cell9'],
        ['DELETE', '/v1/cells/cell9'],
        ['POST', '/v1/tokens/introspect', { token: 'x'.repeat(43), cell: 'cell9' }],
        ['POST', '/v1/credentials', { name: 'nowhere', role: 'agent', cell: 'cell9' }],
      ];
      for (const [method, path, body] of attempts) {
        const answer = await call(base, method, path, { key, body });
        expectError(answer, 404, 'CELL_NOT_FOUND');
        expect(answer.body.details).toEqual({ cell: 'cell9' });
      }
    });

    it('answers TOKEN_NOT_FOUND, CREDENTIAL_NOT_FOUND and NOT_FOUND for unknown ids and routes', async () => {
      expectError(await call(base, 'GET', '/v1/cells/cell1/tokens/999999', { key: deployment.operatorKey }), 404, 'TOKEN_NOT_FOUND');
      expectError(await call(base, 'DELETE', '/v1/cells/cell1/tokens/999999', { key: deployment.agentKeys.cell1 }), 404, 'TOKEN_NOT_FOUND');
      const credential = await call(base, 'DELETE', '/v1/credentials/0123456789abcdef', { key: deployment.operatorKey });
      expectError(credential, 404, 'CREDENTIAL_NOT_FOUND');
      expect(credential.body.details).toEqual({ id: '0123456789abcdef' });
      expectError(await call(base, 'GET', '/v1/no-such-route', { key: deployment.operatorKey }), 404, 'NOT_FOUND');
      expectError(await call(base, 'GET', '/v2/cells'), 404, 'NOT_FOUND');
    });
  });

  describe('400 INVALID_INPUT', () => {
    const badBodies: [name: string, body: Record<string, unknown>, fields: string[]][] = [
      ['a malformed UUID', issueBody({ instanceUuid: 'not-a-uuid' }), ['instanceUuid']],
      ['console type rdp-html5', issueBody({ consoleType: 'rdp-html5' }), ['consoleType']],
      ['console type spice-direct', issueBody({ consoleType: 'spice-direct' }), ['consoleType']],
      ['port 0', issueBody({ port: 0 }), ['port']],
      ['port 70000', issueBody({ port: 70000 }), ['port']],
      ['port "5900" as a string', issueBody({ port: '5900' }), ['port']],
      ['port 1.5', issueBody({ port: 1.5 }), ['port']],
      ['tlsPort 0', issueBody({ tlsPort: 0 }), ['tlsPort']],
      ['a host with spaces', issueBody({ host: 'compute 1' }), ['host']],
      ['a host of 300 characters', issueBody({ host: 'a'.repeat(300) }), ['host']],
      ['ttlSeconds 0', issueBody({ ttlSeconds: 0 }), ['ttlSeconds']],
      ['an internalAccessPath with a space', issueBody({ internalAccessPath: 'a b' }), ['internalAccessPath']],
      ['an unknown extra field', issueBody({ extra: 'field' }), ['extra']],
      ['every field missing', {}, ['consoleType', 'host', 'instanceUuid', 'port']],
      ['two fields missing', { consoleType: 'novnc', host: '192.0.2.10' }, ['instanceUuid', 'port']],
      ['two bad fields at once', issueBody({ port: -1, host: 'not a host' }), ['host', 'port']],
    ];

    it.each(badBodies)('refuses an issue body with %s, naming the fields, and writes nothing', async (_name, body, fields) => {
      const rows = await countTokenRows(deployment.cellUrls.cell1);
      const answer = await call(base, 'POST', '/v1/cells/cell1/tokens', { key: deployment.agentKeys.cell1, body });
      expectError(answer, 400, 'INVALID_INPUT');
      expect(answer.body.details.in).toBe('body');
      expect(invalidFields(answer)).toEqual(fields);
      for (const field of fields) {
        expect(answer.body.message).toContain(field);
      }
      expect(await countTokenRows(deployment.cellUrls.cell1)).toBe(rows);
    });

    it('refuses a body that is not valid JSON', async () => {
      const answer = await call(base, 'POST', '/v1/cells/cell1/tokens', {
        key: deployment.agentKeys.cell1,
        rawBody: '{"instanceUuid": "',
        headers: { 'content-type': 'application/json' },
      });
      expect({ status: answer.status, code: answer.body.code }).toEqual({ status: 400, code: 'INVALID_INPUT' });
      expect(answer.body.message).toMatch(/JSON/);
      expectError(answer, 400, 'INVALID_INPUT');
    });

    it.each(['abc', '0', '-1', '1.5', '9'.repeat(20)])('refuses token id %p in the path', async (id) => {
      for (const [method, key] of [
        ['GET', deployment.operatorKey],
        ['DELETE', deployment.agentKeys.cell1],
      ] as const) {
        const answer = await call(base, method, `/v1/cells/cell1/tokens/${id}`, { key });
        expectError(answer, 400, 'INVALID_INPUT');
        expect(answer.body.details.in).toBe('path');
        expect(invalidFields(answer)).toEqual(['id']);
      }
    });

    it.each(['limit=0', 'limit=5000', 'limit=ten', 'after=0', 'instanceUuid=nope', 'color=blue'])(
      'refuses list query %s, naming a known parameter',
      async (query) => {
        const answer = await call(base, 'GET', `/v1/cells/cell1/tokens?${query}`, { key: deployment.operatorKey });
        expectError(answer, 400, 'INVALID_INPUT');
        expect(answer.body.details.in).toBe('query');
        // A known parameter is named; an unknown key is not repeated (it could be a token).
        expect(invalidFields(answer)).toEqual([query === 'color=blue' ? 'query' : query.split('=')[0]]);
      },
    );

    it('refuses a malformed cell name or instance UUID in the path', async () => {
      for (const [method, path, key, body] of [
        ['GET', '/v1/cells/Cell_1/tokens', deployment.operatorKey, undefined],
        ['POST', '/v1/cells/Cell_1/tokens', deployment.operatorKey, issueBody()],
        ['GET', '/v1/cells/Cell_1', deployment.operatorKey, undefined],
      ] as const) {
        const answer = await call(base, method, path, { key, body });
        expectError(answer, 400, 'INVALID_INPUT');
        expect(invalidFields(answer)).toEqual(['cell']);
      }
      const instance = await call(base, 'DELETE', '/v1/cells/cell1/instances/not-a-uuid/tokens', { key: deployment.agentKeys.cell1 });
      expectError(instance, 400, 'INVALID_INPUT');
      expect(invalidFields(instance)).toEqual(['instanceUuid']);
    });

    it('refuses an agent credential without a cell, and bad cell registrations', async () => {
      const agent = await call(base, 'POST', '/v1/credentials', {
        key: deployment.operatorKey,
        body: { name: 'cell-less agent', role: 'agent' },
      });
      expectError(agent, 400, 'INVALID_INPUT');
      expect(invalidFields(agent)).toEqual(['cell']);
      const role = await call(base, 'POST', '/v1/credentials', { key: deployment.operatorKey, body: { name: 'root', role: 'admin' } });
      expectError(role, 400, 'INVALID_INPUT');
      expect(invalidFields(role)).toEqual(['role']);

      const cell = await call(base, 'POST', '/v1/cells', {
        key: deployment.operatorKey,
        body: { name: 'Bad_Name', databaseUrl: 'mysql://x', proxyUrl: 'ftp://x', accessUrlBases: { rdp: 'http://x' } },
      });
      expectError(cell, 400, 'INVALID_INPUT');
      expect(invalidFields(cell)).toEqual(['accessUrlBases.rdp', 'databaseUrl', 'name', 'proxyUrl']);
      expect(JSON.stringify(cell.body)).not.toContain('mysql://x');
    });

    it('refuses an introspection body without a token or with a bad cell', async () => {
      const missing = await call(base, 'POST', '/v1/tokens/introspect', { key: deployment.operatorKey, body: {} });
      expectError(missing, 400, 'INVALID_INPUT');
      expect(invalidFields(missing)).toEqual(['token']);
      const badCell = await call(base, 'POST', '/v1/tokens/introspect', {
        key: deployment.operatorKey,
        body: { token: 'x', cell: 'Cell 1' },
      });
      expectError(badCell, 400, 'INVALID_INPUT');
      expect(invalidFields(badCell)).toEqual(['cell']);
    });
  });

  describe('bodies', () => {
    /** An issue body padded with JSON whitespace to exactly `bytes` bytes. */
    function paddedBody(bytes: number): string {
      const json = JSON.stringify(issueBody());
      return json.slice(0, -1) + ' '.repeat(bytes - json.length) + '}';
    }

    it(`accepts a body of exactly KEYHOLE_API_BODY_LIMIT_BYTES (${BODY_LIMIT_BYTES}) and refuses one byte more with 413`, async () => {
      const headers = { 'content-type': 'application/json' };
      const atLimit = await call(base, 'POST', '/v1/cells/cell1/tokens', {
        key: deployment.agentKeys.cell1,
        rawBody: paddedBody(BODY_LIMIT_BYTES),
        headers,
      });
      expect(atLimit.status).toBe(201);
      issuedPerCell.cell1 += 1;

      const rows = await countTokenRows(deployment.cellUrls.cell1);
      const over = await call(base, 'POST', '/v1/cells/cell1/tokens', {
        key: deployment.agentKeys.cell1,
        rawBody: paddedBody(BODY_LIMIT_BYTES + 1),
        headers,
      });
      expectError(over, 413, 'PAYLOAD_TOO_LARGE');
      const large = await call(base, 'POST', '/v1/cells/cell1/tokens', {
        key: deployment.agentKeys.cell1,
        body: issueBody({ internalAccessPath: 'x'.repeat(100_000) }),
      });
      expectError(large, 413, 'PAYLOAD_TOO_LARGE');
      expect(await countTokenRows(deployment.cellUrls.cell1)).toBe(rows);
    });

    it('refuses a body that is not application/json with 415', async () => {
      const rows = await countTokenRows(deployment.cellUrls.cell1);
      for (const [contentType, rawBody] of [
        ['text/plain', 'novnc please'],
        ['text/plain', JSON.stringify(issueBody())],
        ['application/x-www-form-urlencoded', 'consoleType=novnc&host=192.0.2.10&port=5900'],
      ]) {
        const answer = await call(base, 'POST', '/v1/cells/cell1/tokens', {
          key: deployment.agentKeys.cell1,
          rawBody,
          headers: { 'content-type': contentType },
        });
        expectError(answer, 415, 'UNSUPPORTED_MEDIA_TYPE');
      }
      // JSON in a charset or content encoding the API does not read is not accepted either.
      const unreadable: Record<string, string>[] = [
        { 'content-type': 'application/json; charset=latin1' },
        { 'content-type': 'application/json', 'content-encoding': 'x-unknown' },
      ];
      for (const headers of unreadable) {
        const answer = await call(base, 'POST', '/v1/cells/cell1/tokens', {
          key: deployment.agentKeys.cell1,
          rawBody: JSON.stringify(issueBody()),
          headers,
        });
        expect({ headers, status: answer.status, code: answer.body?.code }).toEqual({
          headers,
          status: 415,
          code: 'UNSUPPORTED_MEDIA_TYPE',
        });
      }
      expect(await countTokenRows(deployment.cellUrls.cell1)).toBe(rows);
    });
    it('refuses a compressed body with 415 and writes nothing', async () => {
      const rows = await countTokenRows(deployment.cellUrls.cell1);
      const json = JSON.stringify(issueBody());
      for (const [encoding, body] of [
        ['gzip', gzipSync(json)],
        ['deflate', deflateSync(json)],
        ['br', brotliCompressSync(json)],
      ] as const) {
        const refused = await fetch(`${base}/v1/cells/cell1/tokens`, {
          method: 'POST',
          headers: {
            authorization: `Bearer ${deployment.agentKeys.cell1}`,
            'content-type': 'application/json',
            'content-encoding': encoding,
          },
          body: new Uint8Array(body),
        });
        expect({ encoding, status: refused.status, code: ((await refused.json()) as { code: string }).code }).toEqual({
          encoding,
          status: 415,
          code: 'UNSUPPORTED_MEDIA_TYPE',
        });
      }
      expect(await countTokenRows(deployment.cellUrls.cell1)).toBe(rows);
    });

    it('refuses a body with a __proto__ or constructor.prototype key as invalid JSON', async () => {
      const headers = { 'content-type': 'application/json' };
      const json = JSON.stringify(issueBody());
      for (const poison of ['"__proto__": {"isOperator": true}', '"constructor": {"prototype": {"isOperator": true}}']) {
        const answer = await call(base, 'POST', '/v1/cells/cell1/tokens', {
          key: deployment.agentKeys.cell1,
          rawBody: `{${poison}, ${json.slice(1)}`,
          headers,
        });
        expectError(answer, 400, 'INVALID_INPUT');
        expect(answer.body.message).toMatch(/JSON/);
      }
    });

    it('takes only a JSON object or array as a body (strict) and an empty JSON body as {}', async () => {
      const headers = { 'content-type': 'application/json' };
      for (const rawBody of ['123', '"a string"', 'null', 'true']) {
        const answer = await call(base, 'POST', '/v1/cells/cell1/tokens', { key: deployment.agentKeys.cell1, rawBody, headers });
        expectError(answer, 400, 'INVALID_INPUT');
      }
      const empty = await call(base, 'POST', '/v1/tokens/introspect', { key: deployment.operatorKey, rawBody: '', headers });
      expectError(empty, 400, 'INVALID_INPUT');
      expect(invalidFields(empty)).toEqual(['token']);
    });
  });

  describe('routing', () => {
    it('routes as before: a trailing slash and letter case do not matter, a long path parameter is validated, not unrouted', async () => {
      const key = deployment.operatorKey;
      expect((await call(base, 'GET', '/v1/cells/', { key })).status).toBe(200);
      expect((await call(base, 'GET', '/V1/Cells', { key })).status).toBe(200);
      const long = await call(base, 'GET', `/v1/cells/${'a'.repeat(300)}/tokens`, { key });
      expectError(long, 400, 'INVALID_INPUT');
      expect(invalidFields(long)).toEqual(['cell']);
    });

    // Found by token-api-fuzz.e2e-spec.ts: Fastify's router answered these itself (414 and 400 in
    // its own shape), repeating the path.
    it('answers a path parameter over the router limit or a malformed percent-encoding with 400, repeating nothing', async () => {
      const secret = randomSecret();
      for (const path of [
        `/v1/cells/${secret}${'a'.repeat(9_000)}/tokens`,
        `/v1/cells/${secret}%E0%A4%A/tokens`,
        `/v1/cells/%zz${secret}`,
      ]) {
        const answer = await call(base, 'GET', path, { key: deployment.operatorKey });
        expectError(answer, 400, 'INVALID_INPUT');
        expect(answer.headers.get('cache-control')).toBe('no-store');
        expect(JSON.stringify(answer.body)).not.toContain(secret);
      }
    });

    it('refuses a cell-scoped caller a path cell that is no cell name with 400, not a 403 that repeats it', async () => {
      const secret = randomSecret();
      const answer = await call(base, 'DELETE', `/v1/cells/${secret}/tokens/1`, { key: deployment.agentKeys.cell1 });
      expectError(answer, 400, 'INVALID_INPUT');
      expect(invalidFields(answer)).toEqual(['cell']);
      expect(JSON.stringify(answer.body)).not.toContain(secret);
    });
  });

  describe('409', () => {
    it('answers CELL_EXISTS when registering a cell name again, and keeps the cell as it was', async () => {
      const before = await call(base, 'GET', '/v1/cells/cell1', { key: deployment.operatorKey });
      const again = await call(base, 'POST', '/v1/cells', {
        key: deployment.operatorKey,
        body: { name: 'cell1', databaseUrl: deployment.cellUrls.cell2, proxyUrl: 'http://elsewhere.test' },
      });
      expectError(again, 409, 'CELL_EXISTS');
      expect(again.body.details).toEqual({ cell: 'cell1' });
      const after = await call(base, 'GET', '/v1/cells/cell1', { key: deployment.operatorKey });
      expect(after.body).toEqual(before.body);
      // Tokens of cell1 still go to cell1's own database.
      const rows = await countTokenRows(deployment.cellUrls.cell1);
      await issueOk('cell1');
      expect(await countTokenRows(deployment.cellUrls.cell1)).toBe(rows + 1);
    });
  });

  describe('request ids', () => {
    it("keeps a caller's well-formed X-Request-Id and replaces a malformed one", async () => {
      const kept = await call(base, 'GET', '/v1/cells/cell9', {
        key: deployment.operatorKey,
        headers: { 'x-request-id': 'agent-42.retry_1' },
      });
      expectError(kept, 404, 'CELL_NOT_FOUND');
      expect(kept.body.requestId).toBe('agent-42.retry_1');
      const replaced = await call(base, 'GET', '/v1/cells/cell9', {
        key: deployment.operatorKey,
        headers: { 'x-request-id': 'bad id with spaces' },
      });
      expectError(replaced, 404, 'CELL_NOT_FOUND');
      expect(replaced.body.requestId).not.toBe('bad id with spaces');
      const ok = await call(base, 'GET', '/healthz', { headers: { 'x-request-id': 'probe-1' } });
      expect(ok.headers.get('x-request-id')).toBe('probe-1');
    });
  });

  describe('public endpoints', () => {
    it('serves an OpenAPI 3.1 document without a key that lists every route the API serves', async () => {
      const answer = await call(base, 'GET', '/v1/openapi.json');
      expect(answer.status).toBe(200);
      expect(answer.body.openapi).toMatch(/^3\.1\./);

      const documented = new Set<string>();
      for (const [path, operations] of Object.entries(answer.body.paths as Record<string, Record<string, unknown>>)) {
        for (const method of Object.keys(operations)) {
          documented.add(`${method.toUpperCase()} ${path}`);
        }
      }
      // The routes the HTTP server actually serves, as OpenAPI spells them (HEAD is implied by GET).
      const served = new Set<string>();
      for (const route of deployment.api.routes) {
        if (route.method === 'HEAD') {
          continue;
        }
        served.add(`${route.method} ${route.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')}`);
      }
      expect(served.size).toBeGreaterThanOrEqual(17);
      const undocumented = [...served].filter((route) => route !== 'GET /v1/openapi.json' && !documented.has(route));
      expect(undocumented).toEqual([]);
      const phantom = [...documented].filter((route) => !served.has(route));
      expect(phantom).toEqual([]);
    });

    it('answers liveness and readiness without a key', async () => {
      const live = await call(base, 'GET', '/healthz');
      expect(live.status).toBe(200);
      expect(live.body).toEqual({ status: 'ok' });
      const ready = await call(base, 'GET', '/readyz');
      expect(ready.status).toBe(200);
      expect(ready.body).toEqual({ status: 'ready', controlDatabase: true });
    });
  });

  describe('after every refused request', () => {
    it('the cell databases hold exactly the tokens the successful calls created', async () => {
      expect(await countTokenRows(deployment.cellUrls.cell1)).toBe(issuedPerCell.cell1);
      expect(await countTokenRows(deployment.cellUrls.cell2)).toBe(issuedPerCell.cell2);
    });
  });
});
