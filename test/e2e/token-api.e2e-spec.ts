import { randomBytes, randomUUID } from 'node:crypto';
import { ManualClock } from '@keyhole/core';
import { TokensService } from '@keyhole/tokens';
import { createTestDatabase, queryDatabase } from '../support/databases';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { call } from '../support/token-api';
import {
  ApiResponse,
  countTokenRows,
  dumpDatabase,
  expectError,
  fingerprintOf,
  invalidFields,
  issueBody,
  keyParts,
  sha256,
  withoutRequestId,
} from './helpers';

/*
 * The console token lifecycle over HTTP, against the real token API, control database and two
 * cell databases: issue, accept, list, downgrade, revoke, purge, expire.
 */

const DEFAULT_TTL_SECONDS = 600;
const MAX_TTL_SECONDS = 86_400;
const TOKEN_FORMAT = /^[A-Za-z0-9_-]{43}$/;

describe('token API: console token lifecycle', () => {
  let deployment: TestDeployment;
  /** Every plaintext token this deployment handed out, to look for it where it must not be. */
  const handedOut: string[] = [];

  beforeAll(async () => {
    deployment = await startTestDeployment();
  });

  afterAll(async () => {
    await deployment?.stop();
  });

  async function issue(
    cell: string,
    key: string,
    body: Record<string, unknown> = issueBody(),
    headers: Record<string, string> = {},
  ): Promise<ApiResponse> {
    const response = await call(deployment.api.baseUrl, 'POST', `/v1/cells/${cell}/tokens`, { key, body, headers });
    if (typeof response.body?.token === 'string') {
      handedOut.push(response.body.token);
    }
    return response;
  }

  async function issueOk(cell: string, body: Record<string, unknown> = issueBody()): Promise<{ id: number; token: string; body: any }> {
    const response = await issue(cell, deployment.agentKeys[cell], body);
    expect(response.status).toBe(201);
    return { id: response.body.id, token: response.body.token, body: response.body };
  }

  function introspect(token: string, extra: Record<string, unknown> = {}): Promise<ApiResponse> {
    return call(deployment.api.baseUrl, 'POST', '/v1/tokens/introspect', { key: deployment.operatorKey, body: { token, ...extra } });
  }

  describe('issuing', () => {
    it('gives an agent of its cell a noVNC token inside a noVNC access URL, valid for the default TTL', async () => {
      const body = issueBody({ consoleType: 'novnc', host: '192.0.2.21', port: 5901 });
      const before = Math.floor(Date.now() / 1000);
      const response = await issue('cell1', deployment.agentKeys.cell1, body);
      const after = Math.ceil(Date.now() / 1000);

      expect(response.status).toBe(201);
      const issued = response.body;
      expect(issued.token).toMatch(TOKEN_FORMAT);
      expect(issued.accessUrl).toBe(`http://cell1.console.test:6080/vnc_lite.html?path=websockify%3Ftoken%3D${issued.token}`);
      expect(new URL(issued.accessUrl).searchParams.get('path')).toBe(`websockify?token=${issued.token}`);
      expect(issued).toMatchObject({
        objectVersion: '1.4',
        cell: 'cell1',
        consoleType: 'novnc',
        host: '192.0.2.21',
        port: 5901,
        instanceUuid: body.instanceUuid,
        accessUrlBase: 'http://cell1.console.test:6080/vnc_lite.html',
        tlsPort: null,
        internalAccessPath: null,
        issuedBy: keyParts(deployment.agentKeys.cell1).id,
        fingerprint: fingerprintOf(issued.token),
      });
      expect(Number.isInteger(issued.id) && issued.id > 0).toBe(true);
      expect(issued.expires).toBeGreaterThanOrEqual(before + DEFAULT_TTL_SECONDS);
      expect(issued.expires).toBeLessThanOrEqual(after + DEFAULT_TTL_SECONDS);
      expect(Date.parse(issued.expiresAt)).toBe(issued.expires * 1000);
      expect(response.headers.get('keyhole-object-version')).toBe('1.4');
    });

    it('gives serial and spice-html5 tokens as BASE?token=TOKEN on their own client pages', async () => {
      const serial = await issueOk('cell1', issueBody({ consoleType: 'serial', port: 10000 }));
      const spice = await issueOk('cell1', issueBody({ consoleType: 'spice-html5', port: 5930 }));

      expect(serial.token).toMatch(TOKEN_FORMAT);
      expect(serial.body.accessUrl).toBe(`http://cell1.console.test:6080/serial.html?token=${serial.token}`);
      expect(spice.body.accessUrl).toBe(`http://cell1.console.test:6080/spice_auto.html?token=${spice.token}`);
      expect(new Set([serial.token, spice.token]).size).toBe(2);
    });

    it('honours ttlSeconds up to KEYHOLE_TOKEN_MAX_TTL_SECONDS and refuses more without writing anything', async () => {
      const before = Math.floor(Date.now() / 1000);
      const short = await issueOk('cell1', issueBody({ ttlSeconds: 30 }));
      const longest = await issueOk('cell1', issueBody({ ttlSeconds: MAX_TTL_SECONDS }));
      const after = Math.ceil(Date.now() / 1000);
      expect(short.body.expires).toBeGreaterThanOrEqual(before + 30);
      expect(short.body.expires).toBeLessThanOrEqual(after + 30);
      expect(longest.body.expires).toBeGreaterThanOrEqual(before + MAX_TTL_SECONDS);
      expect(longest.body.expires).toBeLessThanOrEqual(after + MAX_TTL_SECONDS);

      const rows = await countTokenRows(deployment.cellUrls.cell1);
      const tooLong = await issue('cell1', deployment.agentKeys.cell1, issueBody({ ttlSeconds: MAX_TTL_SECONDS + 1 }));
      expectError(tooLong, 400, 'INVALID_INPUT');
      expect(invalidFields(tooLong)).toEqual(['ttlSeconds']);
      expect(await countTokenRows(deployment.cellUrls.cell1)).toBe(rows);
    });

    it("keeps the query of a cell's own access URL bases and puts the noVNC token inside its path", async () => {
      const database = await createTestDatabase('cell');
      const base = deployment.api.baseUrl;
      try {
        const registered = await call(base, 'POST', '/v1/cells', {
          key: deployment.operatorKey,
          body: {
            name: 'custom',
            databaseUrl: database.url,
            proxyUrl: 'https://c.example/',
            accessUrlBases: {
              novnc: 'https://c.example/vnc_lite.html?path=novnc&scale=1',
              serial: 'https://c.example/serial.html?theme=dark',
            },
          },
        });
        expect(registered.status).toBe(201);
        expect(registered.body).toMatchObject({
          name: 'custom',
          proxyUrl: 'https://c.example',
          accessUrlBases: {
            novnc: 'https://c.example/vnc_lite.html?path=novnc&scale=1',
            serial: 'https://c.example/serial.html?theme=dark',
            'spice-html5': 'https://c.example/spice_auto.html',
          },
        });
        expect(JSON.stringify(registered.body)).not.toContain(database.url);

        const novnc = await call(base, 'POST', '/v1/cells/custom/tokens', { key: deployment.operatorKey, body: issueBody() });
        expect(novnc.status).toBe(201);
        handedOut.push(novnc.body.token);
        const url = new URL(novnc.body.accessUrl);
        expect(`${url.origin}${url.pathname}`).toBe('https://c.example/vnc_lite.html');
        expect(url.searchParams.get('path')).toBe(`novnc?token=${novnc.body.token}`);
        expect(url.searchParams.get('scale')).toBe('1');
        expect([...url.searchParams.keys()].sort()).toEqual(['path', 'scale']);
        expect(novnc.body.accessUrlBase).toBe('https://c.example/vnc_lite.html?path=novnc&scale=1');

        const serial = await call(base, 'POST', '/v1/cells/custom/tokens', {
          key: deployment.operatorKey,
          body: issueBody({ consoleType: 'serial' }),
        });
        expect(serial.status).toBe(201);
        handedOut.push(serial.body.token);
        expect(serial.body.accessUrl).toBe(`https://c.example/serial.html?theme=dark&token=${serial.body.token}`);

        // The token is stored in the new cell's own database and accepted there.
        expect(await countTokenRows(database.url)).toBe(2);
        const accepted = await introspect(novnc.body.token, { cell: 'custom' });
        expect(accepted.status).toBe(200);
        expect(accepted.body).toMatchObject({ cell: 'custom', authorization: { id: novnc.body.id } });
      } finally {
        const removed = await call(base, 'DELETE', '/v1/cells/custom', { key: deployment.operatorKey });
        expect(removed.status).toBe(200);
        await database.drop();
      }
    });
  });

  describe('accepting', () => {
    it("introspects an issued token to its cell and Nova's console description, and validates it", async () => {
      const body = issueBody({ consoleType: 'novnc', host: 'compute-7.example.org', port: 5907, internalAccessPath: '/websockify/inner' });
      const issued = await issueOk('cell1', body);

      const response = await introspect(issued.token);
      expect(response.status).toBe(200);
      expect(response.body).toEqual({
        cell: 'cell1',
        console: { instance_uuid: body.instanceUuid, host: 'compute-7.example.org', port: 5907, internal_access_path: '/websockify/inner' },
        authorization: expect.objectContaining({
          objectVersion: '1.4',
          id: issued.id,
          consoleType: 'novnc',
          instanceUuid: body.instanceUuid,
          expires: issued.body.expires,
          fingerprint: fingerprintOf(issued.token),
        }),
      });
      expect(JSON.stringify(response.body)).not.toContain(issued.token);

      const withTls = await issueOk('cell2', issueBody({ tlsPort: 5908 }));
      const tls = await introspect(withTls.token);
      expect(tls.status).toBe(200);
      expect(tls.body.cell).toBe('cell2');
      expect(tls.body.console.tls_port).toBe(5908);

      const tokens = deployment.api.app.get(TokensService);
      expect((await tokens.validate('cell1', issued.token)).id).toBe(issued.id);
      await expect(tokens.validate('cell2', issued.token)).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });
    });

    it('stores only the SHA-256 of tokens and never an API key or its secret, in any table of any database', async () => {
      const created = await call(deployment.api.baseUrl, 'POST', '/v1/credentials', {
        key: deployment.operatorKey,
        body: { name: 'dump-check agent', role: 'agent', cell: 'cell2' },
      });
      expect(created.status).toBe(201);
      const newKey: string = created.body.key;
      const own = await Promise.all([
        issueOk('cell1', issueBody({ consoleType: 'novnc' })),
        issueOk('cell1', issueBody({ consoleType: 'serial' })),
        issueOk('cell1', issueBody({ consoleType: 'spice-html5' })),
      ]);
      const byNewKey = await issue('cell2', newKey);
      expect(byNewKey.status).toBe(201);

      const dumps = {
        control: await dumpDatabase(deployment.controlUrl),
        cell1: await dumpDatabase(deployment.cellUrls.cell1),
        cell2: await dumpDatabase(deployment.cellUrls.cell2),
      };
      expect(Object.keys(dumps.cell1)).toEqual(expect.arrayContaining(['console_auth_tokens']));
      expect(Object.keys(dumps.control)).toEqual(expect.arrayContaining(['api_credentials', 'cells']));
      const keys = [deployment.operatorKey, ...Object.values(deployment.agentKeys), newKey];
      const secrets = [...handedOut, ...keys, ...keys.map((key) => keyParts(key).secret)];
      expect(handedOut.length).toBeGreaterThanOrEqual(4);
      for (const [database, tables] of Object.entries(dumps)) {
        for (const [table, text] of Object.entries(tables)) {
          const leaked = secrets.filter((secret) => text.includes(secret)).map((secret) => `${secret.slice(0, 6)}...`);
          expect({ database, table, leaked }).toEqual({ database, table, leaked: [] });
        }
      }

      for (const { id, token } of own) {
        const [row] = await queryDatabase<{ token_hash: string }>(
          deployment.cellUrls.cell1,
          'SELECT token_hash FROM console_auth_tokens WHERE id = $1',
          [id],
        );
        expect(row.token_hash).toBe(sha256(token));
        expect(row.token_hash).toMatch(/^[0-9a-f]{64}$/);
      }
    });
  });

  describe('object versions', () => {
    const NEWER_FIELDS = ['expires', 'expiresAt', 'tlsPort', 'issuedBy', 'fingerprint'];
    const cases: [version: string, present: string[]][] = [
      ['1.0', []],
      ['1.1', []],
      ['1.2', ['expires', 'expiresAt']],
      ['1.3', ['expires', 'expiresAt', 'tlsPort']],
      ['1.4', NEWER_FIELDS],
    ];

    it.each(cases)('answers in object version %s with only the fields it had, on issue and on get', async (version, present) => {
      const absent = NEWER_FIELDS.filter((field) => !present.includes(field));
      const headers = { 'Keyhole-Object-Version': version };
      const issued = await issue('cell1', deployment.agentKeys.cell1, issueBody({ tlsPort: 5999 }), headers);
      expect(issued.status).toBe(201);
      expect(issued.headers.get('keyhole-object-version')).toBe(version);
      expect(issued.body.objectVersion).toBe(version);
      // What issuing is for is there in every version.
      expect(issued.body.token).toMatch(TOKEN_FORMAT);
      expect(issued.body.accessUrl).toContain(issued.body.token);
      for (const field of ['id', 'consoleType', 'host', 'port', 'instanceUuid', 'accessUrlBase', ...present]) {
        expect(issued.body).toHaveProperty(field);
      }
      for (const field of absent) {
        expect(issued.body).not.toHaveProperty(field);
      }
      if (present.includes('tlsPort')) {
        expect(issued.body.tlsPort).toBe(5999);
      }

      const fetched = await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/tokens/${issued.body.id}`, {
        key: deployment.operatorKey,
        headers,
      });
      expect(fetched.status).toBe(200);
      expect(fetched.headers.get('keyhole-object-version')).toBe(version);
      expect(fetched.body.objectVersion).toBe(version);
      expect(fetched.body.id).toBe(issued.body.id);
      for (const field of present) {
        expect(fetched.body).toHaveProperty(field);
      }
      for (const field of absent) {
        expect(fetched.body).not.toHaveProperty(field);
      }
    });

    it('refuses an unknown object version with 400 UNSUPPORTED_OBJECT_VERSION and issues nothing', async () => {
      const headers = { 'Keyhole-Object-Version': '9.9' };
      const rows = await countTokenRows(deployment.cellUrls.cell1);
      const issued = await issue('cell1', deployment.agentKeys.cell1, issueBody(), headers);
      expectError(issued, 400, 'UNSUPPORTED_OBJECT_VERSION');
      expect(issued.body.details.supported).toEqual(['1.0', '1.1', '1.2', '1.3', '1.4']);
      expect(await countTokenRows(deployment.cellUrls.cell1)).toBe(rows);

      const existing = await issueOk('cell1');
      const fetched = await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/tokens/${existing.id}`, {
        key: deployment.operatorKey,
        headers,
      });
      expectError(fetched, 400, 'UNSUPPORTED_OBJECT_VERSION');
    });
  });

  describe('revoking', () => {
    it('revokes one token by id: it stops working at once, and a second revoke is 404', async () => {
      const issued = await issueOk('cell1');
      expect((await introspect(issued.token)).status).toBe(200);

      const revoked = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/tokens/${issued.id}`, {
        key: deployment.agentKeys.cell1,
      });
      expect(revoked.status).toBe(204);
      expect(revoked.body).toBeUndefined();

      expectError(await introspect(issued.token), 404, 'TOKEN_NOT_FOUND');
      await expect(deployment.api.app.get(TokensService).validate('cell1', issued.token)).rejects.toMatchObject({
        code: 'TOKEN_NOT_FOUND',
      });
      expectError(
        await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/tokens/${issued.id}`, { key: deployment.operatorKey }),
        404,
        'TOKEN_NOT_FOUND',
      );
      const again = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/tokens/${issued.id}`, {
        key: deployment.agentKeys.cell1,
      });
      expectError(again, 404, 'TOKEN_NOT_FOUND');
      expect(await countTokenRows(deployment.cellUrls.cell1, 'id = $1', [issued.id])).toBe(0);
    });

    it("revokes every token of an instance, and only that instance's, in that cell only", async () => {
      const instance = randomUUID();
      const other = randomUUID();
      const first = await issueOk('cell1', issueBody({ instanceUuid: instance, consoleType: 'novnc' }));
      const second = await issueOk('cell1', issueBody({ instanceUuid: instance, consoleType: 'serial' }));
      const otherInstance = await issueOk('cell1', issueBody({ instanceUuid: other }));
      const otherCell = await issueOk('cell2', issueBody({ instanceUuid: instance }));

      // Path UUIDs are case-insensitive, as the instance UUIDs they name.
      const path = `/v1/cells/cell1/instances/${instance.toUpperCase()}/tokens`;
      const revoked = await call(deployment.api.baseUrl, 'DELETE', path, { key: deployment.agentKeys.cell1 });
      expect(revoked.status).toBe(200);
      expect(revoked.body.revoked).toBe(2);
      expect([...revoked.body.ids].sort((a: number, b: number) => a - b)).toEqual([first.id, second.id].sort((a, b) => a - b));

      expectError(await introspect(first.token), 404, 'TOKEN_NOT_FOUND');
      expectError(await introspect(second.token), 404, 'TOKEN_NOT_FOUND');
      expect((await introspect(otherInstance.token)).body.cell).toBe('cell1');
      const stillInCell2 = await introspect(otherCell.token);
      expect(stillInCell2.status).toBe(200);
      expect(stillInCell2.body.cell).toBe('cell2');

      const again = await call(deployment.api.baseUrl, 'DELETE', path, { key: deployment.operatorKey });
      expect(again.status).toBe(200);
      expect(again.body).toEqual({ revoked: 0, ids: [] });
    });
  });

  describe('listing', () => {
    it("lists one instance's tokens, page by page, and never a token or an access URL", async () => {
      const instance = randomUUID();
      const mine = [
        await issueOk('cell1', issueBody({ instanceUuid: instance, consoleType: 'novnc' })),
        await issueOk('cell1', issueBody({ instanceUuid: instance, consoleType: 'serial' })),
        await issueOk('cell1', issueBody({ instanceUuid: instance, consoleType: 'spice-html5' })),
      ];
      await issueOk('cell1', issueBody());
      const ids = mine.map((token) => token.id);

      const all = await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/tokens?instanceUuid=${instance}`, {
        key: deployment.operatorKey,
      });
      expect(all.status).toBe(200);
      expect(all.body.tokens.map((token: { id: number }) => token.id)).toEqual(ids);
      expect(all.body.tokens.every((token: { instanceUuid: string }) => token.instanceUuid === instance)).toBe(true);
      expect(all.body.nextAfter).toBeNull();

      const first = await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/tokens?instanceUuid=${instance}&limit=2`, {
        key: deployment.operatorKey,
      });
      expect(first.status).toBe(200);
      expect(first.body.tokens.map((token: { id: number }) => token.id)).toEqual(ids.slice(0, 2));
      expect(first.body.nextAfter).toBe(ids[1]);
      const second = await call(
        deployment.api.baseUrl,
        'GET',
        `/v1/cells/cell1/tokens?instanceUuid=${instance}&limit=2&after=${first.body.nextAfter}`,
        { key: deployment.operatorKey },
      );
      expect(second.status).toBe(200);
      expect(second.body.tokens.map((token: { id: number }) => token.id)).toEqual(ids.slice(2));
      expect(second.body.nextAfter).toBeNull();

      const everything = await call(deployment.api.baseUrl, 'GET', '/v1/cells/cell1/tokens?limit=1000', { key: deployment.operatorKey });
      expect(everything.status).toBe(200);
      for (const page of [all, first, second, everything]) {
        const text = JSON.stringify(page.body);
        expect(handedOut.filter((token) => text.includes(token))).toEqual([]);
        for (const token of page.body.tokens) {
          expect(token).not.toHaveProperty('token');
          expect(token).not.toHaveProperty('accessUrl');
        }
      }
      expect(everything.body.tokens.map((token: { fingerprint: string }) => token.fingerprint)).toEqual(
        expect.arrayContaining(mine.map((token) => fingerprintOf(token.token))),
      );
    });
  });
});

describe('token API: expiry and purge (manual clock)', () => {
  // Whole seconds, well after now: nothing here depends on the real time.
  const START_MS = Date.UTC(2031, 0, 1, 0, 0, 0);
  const clock = new ManualClock(START_MS);
  let deployment: TestDeployment;

  beforeAll(async () => {
    deployment = await startTestDeployment({ clock });
  });

  afterAll(async () => {
    await deployment?.stop();
  });

  async function issueOk(cell: string, body: Record<string, unknown>): Promise<{ id: number; token: string }> {
    const response = await call(deployment.api.baseUrl, 'POST', `/v1/cells/${cell}/tokens`, { key: deployment.agentKeys[cell], body });
    expect(response.status).toBe(201);
    return response.body;
  }

  function introspect(token: string, extra: Record<string, unknown> = {}): Promise<ApiResponse> {
    return call(deployment.api.baseUrl, 'POST', '/v1/tokens/introspect', { key: deployment.operatorKey, body: { token, ...extra } });
  }

  function purge(cell: string, key: string, body: Record<string, unknown>): Promise<ApiResponse> {
    return call(deployment.api.baseUrl, 'POST', `/v1/cells/${cell}/tokens/purge`, { key, body });
  }

  it('purges exactly the expired tokens: of one host for an agent, of every host for an operator', async () => {
    clock.set(START_MS);
    expect(await countTokenRows(deployment.cellUrls.cell1)).toBe(0);
    const hostA = '198.51.100.1';
    const hostB = '198.51.100.2';
    await issueOk('cell1', issueBody({ host: hostA, ttlSeconds: 10 }));
    await issueOk('cell1', issueBody({ host: hostA, ttlSeconds: 20 }));
    await issueOk('cell1', issueBody({ host: hostB, ttlSeconds: 10 }));
    const liveA = await issueOk('cell1', issueBody({ host: hostA, ttlSeconds: 100 }));
    const liveB = await issueOk('cell1', issueBody({ host: hostB, ttlSeconds: 100 }));
    await issueOk('cell2', issueBody({ host: hostA, ttlSeconds: 10 }));

    clock.advanceSeconds(20); // expires <= now for the three short ones in cell1

    const withoutHost = await purge('cell1', deployment.agentKeys.cell1, {});
    expectError(withoutHost, 403, 'FORBIDDEN');
    expect(await countTokenRows(deployment.cellUrls.cell1)).toBe(5);

    const hostOnly = await purge('cell1', deployment.agentKeys.cell1, { host: hostB });
    expect(hostOnly.status).toBe(200);
    expect(hostOnly.body).toEqual({ purged: 1, sessions: 0 });
    expect(await countTokenRows(deployment.cellUrls.cell1, 'host = $1', [hostB])).toBe(1);
    expect(await countTokenRows(deployment.cellUrls.cell1, 'host = $1', [hostA])).toBe(3);

    const everyHost = await purge('cell1', deployment.operatorKey, {});
    expect(everyHost.status).toBe(200);
    expect(everyHost.body).toEqual({ purged: 2, sessions: 0 });
    const left = await queryDatabase<{ id: string }>(deployment.cellUrls.cell1, 'SELECT id FROM console_auth_tokens ORDER BY id');
    expect(left.map((row) => Number(row.id))).toEqual([liveA.id, liveB.id]);
    expect((await introspect(liveA.token)).status).toBe(200);
    expect((await introspect(liveB.token)).status).toBe(200);
    // Another cell's expired rows are not this cell's purge's business.
    expect(await countTokenRows(deployment.cellUrls.cell2)).toBe(1);

    expect((await purge('cell1', deployment.operatorKey, {})).body).toEqual({ purged: 0, sessions: 0 });
  });

  it('accepts a token until one second before expires and refuses it from expires on', async () => {
    clock.set(START_MS + 1_000_000);
    const issued = await issueOk('cell1', issueBody({ ttlSeconds: 10 }));
    const tokens = deployment.api.app.get(TokensService);

    clock.advanceSeconds(9);
    expect((await introspect(issued.token)).status).toBe(200);
    expect((await tokens.validate('cell1', issued.token)).id).toBe(issued.id);

    clock.advanceSeconds(1);
    expectError(await introspect(issued.token), 404, 'TOKEN_NOT_FOUND');
    await expect(tokens.validate('cell1', issued.token)).rejects.toMatchObject({ code: 'TOKEN_NOT_FOUND' });

    clock.advanceSeconds(1);
    expectError(await introspect(issued.token), 404, 'TOKEN_NOT_FOUND');
    // Expired is not deleted: the operator still sees the row until it is purged.
    expect((await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/tokens/${issued.id}`, { key: deployment.operatorKey })).status).toBe(
      200,
    );
  });

  it('gives unknown, expired and revoked tokens exactly the same answer', async () => {
    clock.set(START_MS + 2_000_000);
    const expiring = await issueOk('cell1', issueBody({ ttlSeconds: 5 }));
    const revoked = await issueOk('cell1', issueBody({ ttlSeconds: 600 }));
    const revoke = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/tokens/${revoked.id}`, {
      key: deployment.agentKeys.cell1,
    });
    expect(revoke.status).toBe(204);
    clock.advanceSeconds(5);
    const unknown = randomBytes(32).toString('base64url');

    for (const extra of [{}, { cell: 'cell1' }]) {
      const answers = await Promise.all([introspect(unknown, extra), introspect(expiring.token, extra), introspect(revoked.token, extra)]);
      for (const answer of answers) {
        expectError(answer, 404, 'TOKEN_NOT_FOUND');
      }
      const [reference, ...others] = answers.map((answer) => withoutRequestId(answer.body));
      for (const other of others) {
        expect(other).toEqual(reference);
      }
    }
  });
});

describe('token API: a generated token that is already stored', () => {
  const FIXED_TOKEN = 'fixed-token-value-that-collides-0123456789';
  let deployment: TestDeployment;

  beforeAll(async () => {
    deployment = await startTestDeployment({ tokenGenerator: () => FIXED_TOKEN });
  });

  afterAll(async () => {
    await deployment?.stop();
  });

  it('refuses the second issue with 409 TOKEN_IN_USE and keeps exactly one row', async () => {
    const first = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: deployment.agentKeys.cell1,
      body: issueBody(),
    });
    expect(first.status).toBe(201);
    expect(first.body.token).toBe(FIXED_TOKEN);

    const second = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: deployment.agentKeys.cell1,
      body: issueBody(),
    });
    expectError(second, 409, 'TOKEN_IN_USE');
    expect(JSON.stringify(second.body)).not.toContain(FIXED_TOKEN);

    const rows = await queryDatabase<{ id: string; token_hash: string }>(
      deployment.cellUrls.cell1,
      'SELECT id, token_hash FROM console_auth_tokens',
    );
    expect(rows).toEqual([{ id: String(first.body.id), token_hash: sha256(FIXED_TOKEN) }]);
  });
});
