import { randomUUID } from 'node:crypto';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';
import { ApiResponse, fingerprintOf, issueBody, keyParts, randomSecret } from './helpers';

/*
 * A token never appears in a log line, nor does an API key or its secret (DESIGN.md, Tokens):
 * every line the API writes, at trace level, during a realistic session is checked.
 */

interface LogLine {
  level: string;
  msg?: string;
  context?: string;
  requestId?: string;
  method?: string;
  route?: string | null;
  status?: number;
}

describe('token API logs', () => {
  let deployment: TestDeployment;
  let base: string;

  // Databases cloned, migrations checked, the API booted: more than jest's default 5 s on a loaded machine.
  beforeAll(async () => {
    deployment = await startTestDeployment();
    base = deployment.api.baseUrl;
  }, 30_000);

  afterAll(async () => {
    await deployment?.stop();
  });

  /** Every request of a session, with its own request id, to find its access log line. */
  function session(name: string) {
    const requests: { requestId: string; method: string; path: string; status: number }[] = [];
    return {
      requests,
      async send(method: string, path: string, options: Parameters<typeof call>[3] = {}): Promise<ApiResponse> {
        const requestId = `${name}-${requests.length + 1}`;
        const response = await call(base, method, path, { ...options, headers: { ...options.headers, 'x-request-id': requestId } });
        requests.push({ requestId, method, path: path.split('?')[0], status: response.status });
        return response;
      },
    };
  }

  function logLines(): LogLine[] {
    return deployment.api
      .logs()
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as LogLine);
  }

  /** The access lines (`msg: 'request'`) written so far, by request id. */
  function accessLinesByRequest(): Map<string, LogLine[]> {
    const byRequest = new Map<string, LogLine[]>();
    for (const line of logLines()) {
      if (line.msg !== 'request' || line.requestId === undefined) {
        continue;
      }
      byRequest.set(line.requestId, [...(byRequest.get(line.requestId) ?? []), line]);
    }
    return byRequest;
  }

  /** Waits for one access line per request (written when each response finished) and checks them. */
  async function expectAccessLines(requests: { requestId: string; method: string; path: string; status: number }[]): Promise<void> {
    // A missing line is reported by the assertions below, not by the wait.
    await waitUntil(
      () => (requests.every((request) => accessLinesByRequest().has(request.requestId)) ? true : undefined),
      2_000,
      'an access line per request',
      { intervalMs: 0 },
    ).catch(() => false);
    const byRequest = accessLinesByRequest();
    for (const request of requests) {
      // The line names the route template, never the path as sent (a token may be in it).
      const lines = (byRequest.get(request.requestId) ?? []).map((line) => ({
        method: line.method,
        status: line.status,
        rawPathLogged: 'path' in line || 'url' in line,
      }));
      expect({ requestId: request.requestId, lines }).toEqual({
        requestId: request.requestId,
        lines: [{ method: request.method, status: request.status, rawPathLogged: false }],
      });
    }
  }

  function expectNoSecretsInLogs(secrets: Record<string, string>): void {
    const text = deployment.api.logs();
    const leaked = Object.entries(secrets)
      .filter(([, secret]) => text.includes(secret) || text.includes(encodeURIComponent(secret)))
      .map(([name]) => name);
    expect(leaked).toEqual([]);
  }

  it('logs fingerprints and one access line per request, but no token, API key or key secret', async () => {
    const { requests, send } = session('session');
    const operator = deployment.operatorKey;

    // An operator creates an agent credential for cell1 and a cell-scoped operator.
    const agentCreated = await send('POST', '/v1/credentials', {
      key: operator,
      body: { name: 'nova-compute-1', role: 'agent', cell: 'cell1' },
    });
    expect(agentCreated.status).toBe(201);
    const agentKey: string = agentCreated.body.key;
    const scopedCreated = await send('POST', '/v1/credentials', {
      key: operator,
      body: { name: 'cell1 ops', role: 'operator', cell: 'cell1' },
    });
    expect(scopedCreated.status).toBe(201);
    const scopedKey: string = scopedCreated.body.key;

    // The agent issues a token of each console type.
    const instance = randomUUID();
    const issued: { id: number; token: string; accessUrl: string }[] = [];
    for (const body of [
      issueBody({ instanceUuid: instance, consoleType: 'novnc', port: 5900, internalAccessPath: 'websockify' }),
      issueBody({ instanceUuid: instance, consoleType: 'spice-html5', port: 5930, tlsPort: 5931 }),
      issueBody({ instanceUuid: instance, consoleType: 'serial', port: 10000 }),
      issueBody({ consoleType: 'novnc', ttlSeconds: 60 }),
    ]) {
      const response = await send('POST', '/v1/cells/cell1/tokens', { key: agentKey, body });
      expect(response.status).toBe(201);
      issued.push(response.body);
    }
    const tokens = issued.map((entry) => entry.token);

    // Operators look them up.
    for (const token of tokens) {
      expect((await send('POST', '/v1/tokens/introspect', { key: operator, body: { token } })).status).toBe(200);
    }
    expect((await send('POST', '/v1/tokens/introspect', { key: scopedKey, body: { token: tokens[0], cell: 'cell1' } })).status).toBe(200);
    expect((await send('GET', `/v1/cells/cell1/tokens?instanceUuid=${instance}`, { key: operator })).status).toBe(200);
    expect((await send('GET', `/v1/cells/cell1/tokens/${issued[0].id}`, { key: scopedKey })).status).toBe(200);

    // Revocations, then the revoked token is presented again.
    expect((await send('DELETE', `/v1/cells/cell1/tokens/${issued[3].id}`, { key: agentKey })).status).toBe(204);
    expect((await send('POST', '/v1/tokens/introspect', { key: operator, body: { token: tokens[3] } })).status).toBe(404);
    expect((await send('DELETE', `/v1/cells/cell1/instances/${instance}/tokens`, { key: agentKey })).status).toBe(200);
    expect((await send('POST', '/v1/tokens/introspect', { key: operator, body: { token: tokens[0] } })).status).toBe(404);
    expect((await send('POST', '/v1/cells/cell1/tokens/purge', { key: agentKey, body: { host: '192.0.2.10' } })).status).toBe(200);

    // Failed authentications: a wrong secret, a console token where a key belongs, a mangled key.
    const agentId = keyParts(agentKey).id;
    expect((await send('GET', '/v1/cells', { headers: { authorization: `Bearer khk_${agentId}_${randomSecret()}` } })).status).toBe(401);
    expect(
      (await send('POST', '/v1/cells/cell1/tokens', { headers: { authorization: `Bearer ${tokens[1]}` }, body: issueBody() })).status,
    ).toBe(401);
    expect((await send('GET', '/v1/cells', { headers: { authorization: `Bearer ${agentKey}x` } })).status).toBe(401);
    expect(
      (await send('GET', '/v1/cells', { headers: { authorization: `Basic ${Buffer.from(`agent:${agentKey}`).toString('base64')}` } }))
        .status,
    ).toBe(401);

    // Bad input that carries a token or a key in a body field.
    const live = tokens[2];
    const badBodies: Record<string, unknown>[] = [
      issueBody({ internalAccessPath: `with space ${live}` }),
      issueBody({ host: `${live} ${live}` }),
      issueBody({ token: live }),
      issueBody({ [live]: true }),
      issueBody({ consoleType: live }),
      issueBody({ instanceUuid: agentKey }),
    ];
    for (const body of badBodies) {
      expect((await send('POST', '/v1/cells/cell1/tokens', { key: agentKey, body })).status).toBe(400);
    }
    expect((await send('POST', '/v1/tokens/introspect', { key: operator, body: { token: `${live}\u0000` } })).status).toBe(404);
    expect((await send('POST', '/v1/tokens/introspect', { key: operator, body: { token: live, apiKey: agentKey } })).status).toBe(400);
    expect((await send('POST', '/v1/tokens/introspect', { key: operator, body: { token: live.repeat(7) } })).status).toBe(400);
    expect((await send('POST', '/v1/credentials', { key: operator, body: { name: agentKey, role: 'agent' } })).status).toBe(400);
    expect(
      (
        await send('POST', '/v1/tokens/introspect', {
          key: operator,
          rawBody: `{"token": "${live}"`,
          headers: { 'content-type': 'application/json' },
        })
      ).status,
    ).toBe(400);
    expect(
      (await send('POST', '/v1/tokens/introspect', { key: operator, rawBody: `token=${live}`, headers: { 'content-type': 'text/plain' } }))
        .status,
    ).toBe(415);
    // The token in a query string: refused, and the access line carries the path only.
    expect((await send('GET', `/v1/cells/cell1/tokens?token=${live}`, { key: operator })).status).toBe(400);

    // The agent's credential is revoked; its next request fails.
    expect((await send('DELETE', `/v1/credentials/${agentId}`, { key: operator })).status).toBe(204);
    expect((await send('POST', '/v1/cells/cell1/tokens', { key: agentKey, body: issueBody() })).status).toBe(401);

    const keys = { operator, agentCell1: deployment.agentKeys.cell1, agentCell2: deployment.agentKeys.cell2, agentKey, scopedKey };
    const secrets: Record<string, string> = {};
    tokens.forEach((token, index) => (secrets[`token ${index}`] = token));
    issued.forEach((entry, index) => (secrets[`access URL ${index}`] = entry.accessUrl));
    for (const [name, key] of Object.entries(keys)) {
      secrets[`${name} key`] = key;
      secrets[`${name} secret`] = keyParts(key).secret;
    }
    expectNoSecretsInLogs(secrets);

    const text = deployment.api.logs();
    for (const token of tokens) {
      expect(text).toContain(fingerprintOf(token));
    }
    const issuedLines = logLines().filter((line) => line.msg === 'console token issued');
    expect(issuedLines.map((line) => (line as { fingerprint?: string }).fingerprint)).toEqual(
      expect.arrayContaining(tokens.map(fingerprintOf)),
    );

    await expectAccessLines(requests);
    const routes = new Set(
      logLines()
        .filter((entry) => entry.msg === 'request')
        .map((entry) => entry.route),
    );
    expect(routes).toContain('/v1/cells/:cell/tokens');
    expect(routes).toContain('/v1/tokens/introspect');
    for (const route of routes) {
      expect(route ?? '').not.toContain('?');
    }
  });

  it('does not log a token that a client puts in the URL path by mistake', async () => {
    const { requests, send } = session('path');
    const issued = await send('POST', '/v1/cells/cell2/tokens', { key: deployment.agentKeys.cell2, body: issueBody() });
    expect(issued.status).toBe(201);
    const token: string = issued.body.token;

    // Nova's API takes the token in the path (GET /os-console-auth-tokens/{token}); a client ported
    // from Nova, or one that confuses a token with its id, sends it there.
    expect((await send('GET', `/v1/tokens/${token}`, { key: deployment.operatorKey })).status).toBe(404);
    expect((await send('GET', `/v1/cells/cell2/tokens/${token}`, { key: deployment.operatorKey })).status).toBe(400);
    expect((await send('DELETE', `/v1/cells/cell2/tokens/${token}`, { key: deployment.agentKeys.cell2 })).status).toBe(400);

    await waitUntil(
      () =>
        logLines().filter((line) => line.msg === 'request' && line.requestId?.startsWith('path-')).length >= requests.length
          ? true
          : undefined,
      2_000,
      'the access lines',
      { intervalMs: 0 },
    );
    expectNoSecretsInLogs({ token });
  });
});
