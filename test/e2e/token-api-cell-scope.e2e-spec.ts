import { randomUUID } from 'node:crypto';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { call } from '../support/token-api';
import { ApiResponse, countTokenRows, expectError, issueBody, keyParts } from './helpers';

/*
 * Cell scope is enforced by default: every route with a `{cell}` in the served OpenAPI document,
 * whatever its method, refuses a credential scoped to another cell with 403, and lets the same
 * credential through on its own cell. The routes come from the document, so a route added later
 * is walked without editing this file (only a new request body needs an entry below).
 */

interface Operation {
  method: string;
  path: string;
  pathParameters: { name: string; schema: { type?: string; format?: string } }[];
  hasBody: boolean;
}

/** A valid body for each route that takes one, so that a 403 is the scope and not the validation. */
const BODIES: Record<string, () => unknown> = {
  'POST /v1/cells/{cell}/tokens': () => issueBody(),
  'POST /v1/cells/{cell}/tokens/purge': () => ({ host: '192.0.2.10' }),
  'PUT /v1/cells/{cell}/legacy-fallback': () => ({ enabled: false }),
};

/** The routes an agent may call on its own cell; every other `{cell}` route is for operators. */
const AGENT_ROUTES = [
  'DELETE /v1/cells/{cell}/instances/{instanceUuid}/tokens',
  'DELETE /v1/cells/{cell}/tokens/{id}',
  'GET /v1/cells/{cell}/instances/{instanceUuid}/serial-ports',
  'POST /v1/cells/{cell}/tokens',
  'POST /v1/cells/{cell}/tokens/purge',
];

/** Deployment-wide operations: a cell-scoped operator is refused them even on its own cell. */
const EVERY_CELL_ROUTES = ['DELETE /v1/cells/{cell}'];

describe('token API: cell scope on every {cell} route', () => {
  let deployment: TestDeployment;
  let base: string;
  let operations: Operation[];
  let allPaths: string[];
  let scopedOperatorKey: string;

  beforeAll(async () => {
    deployment = await startTestDeployment();
    base = deployment.api.baseUrl;
    const document = await call(base, 'GET', '/v1/openapi.json');
    expect(document.status).toBe(200);
    allPaths = Object.keys(document.body.paths);
    operations = cellOperations(document.body.paths);
    const created = await call(base, 'POST', '/v1/credentials', {
      key: deployment.operatorKey,
      body: { name: 'cell1 operator', role: 'operator', cell: 'cell1' },
    });
    expect(created.status).toBe(201);
    scopedOperatorKey = created.body.key;
  });

  afterAll(async () => {
    await deployment?.stop();
  });

  function send(operation: Operation, cell: string, key: string): Promise<ApiResponse> {
    const name = nameOf(operation);
    const body = BODIES[name];
    // A route that needs a body but has none here would be refused for its body: make that loud.
    expect({ route: name, hasBody: operation.hasBody }).toEqual({ route: name, hasBody: body !== undefined });
    return call(base, operation.method, pathFor(operation, cell), { key, body: body?.() });
  }

  it('finds every {cell} route of the document, with each method', () => {
    const names = operations.map(nameOf);
    expect(names).toEqual(expect.arrayContaining([...AGENT_ROUTES, ...EVERY_CELL_ROUTES, 'PUT /v1/cells/{cell}/legacy-fallback']));
    expect(names.length).toBeGreaterThanOrEqual(13);
    // The guard knows a cell by the parameter's name: a cell under any other name would not be scoped.
    expect(allPaths.filter((path) => /\/cells\/\{(?!cell\})/.test(path))).toEqual([]);
  });

  it.each([
    ['an agent of cell1', (d: TestDeployment) => d.agentKeys.cell1],
    ['an operator scoped to cell1', () => scopedOperatorKey],
  ])('refuses %s on every {cell} route of cell2, and changes nothing there', async (_who, keyOf) => {
    const key = keyOf(deployment);
    const rowsBefore = await countTokenRows(deployment.cellUrls.cell2);
    for (const operation of operations) {
      const answer = await send(operation, 'cell2', key);
      expectError(answer, 403, 'FORBIDDEN');
      expect({ route: nameOf(operation), details: answer.body.details, message: answer.body.message }).toEqual({
        route: nameOf(operation),
        details: { cell: 'cell2' },
        message: "This credential may only act on cell 'cell1'",
      });
    }
    expect(await countTokenRows(deployment.cellUrls.cell2)).toBe(rowsBefore);
    const fallback = await call(base, 'GET', '/v1/cells/cell2/legacy-fallback', { key: deployment.operatorKey });
    expect(fallback.status).toBe(200);
    expect(deployment.api.logs()).not.toContain(keyParts(key).secret);
  });

  it('lets an agent of cell1 through on its own cell wherever agents may act', async () => {
    const passed: string[] = [];
    for (const operation of operations) {
      const answer = await send(operation, 'cell1', deployment.agentKeys.cell1);
      if (answer.status === 403) {
        // Only the role rule may refuse it here, never the scope.
        expect({ route: nameOf(operation), details: answer.body.details }).toEqual({
          route: nameOf(operation),
          details: { role: 'agent' },
        });
      } else {
        passed.push(nameOf(operation));
      }
    }
    expect(passed.sort()).toEqual(AGENT_ROUTES);
  });

  it('lets an operator scoped to cell1 through on its own cell, except deployment-wide operations', async () => {
    const refused: string[] = [];
    for (const operation of operations) {
      const answer = await send(operation, 'cell1', scopedOperatorKey);
      if (answer.status === 403) {
        refused.push(nameOf(operation));
        expect(answer.body.message).toBe('This operation needs an operator credential for every cell');
      }
    }
    expect(refused).toEqual(EVERY_CELL_ROUTES);
    // The refused removal left cell1 registered.
    expect((await call(base, 'GET', '/v1/cells/cell1', { key: deployment.operatorKey })).status).toBe(200);
  });

  it('lets an operator of every cell through on any cell', async () => {
    for (const operation of operations) {
      // An unregistered cell: the guard lets it pass, the handler answers that it does not exist.
      const answer = await send(operation, 'cell9', deployment.operatorKey);
      expect({ route: nameOf(operation), status: answer.status }).toEqual({ route: nameOf(operation), status: 404 });
    }
  });
});

function cellOperations(paths: Record<string, Record<string, { parameters?: unknown[]; requestBody?: unknown }>>): Operation[] {
  const found: Operation[] = [];
  for (const [path, methods] of Object.entries(paths)) {
    if (!path.includes('{cell}')) {
      continue;
    }
    for (const [method, operation] of Object.entries(methods)) {
      const parameters = (operation.parameters ?? []) as { name: string; in: string; schema: Operation['pathParameters'][0]['schema'] }[];
      found.push({
        method: method.toUpperCase(),
        path,
        pathParameters: parameters.filter((parameter) => parameter.in === 'path'),
        hasBody: operation.requestBody !== undefined,
      });
    }
  }
  return found;
}

function nameOf(operation: Operation): string {
  return `${operation.method} ${operation.path}`;
}

/** The route's path with `cell` and a valid value of every other path parameter's schema. */
function pathFor(operation: Operation, cell: string): string {
  let path = operation.path.replace('{cell}', cell);
  for (const parameter of operation.pathParameters) {
    if (parameter.name === 'cell') {
      continue;
    }
    const value = parameter.schema.format === 'uuid' ? randomUUID() : parameter.schema.type === 'integer' ? '999999' : undefined;
    expect({ parameter: parameter.name, value }).toEqual({ parameter: parameter.name, value: expect.any(String) });
    path = path.replace(`{${parameter.name}}`, value as string);
  }
  return path;
}
