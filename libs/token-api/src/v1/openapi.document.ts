import { OpenAPIRegistry, OpenApiGeneratorV31, ResponseConfig, RouteConfig } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import {
  cellNameSchema,
  cellSchema,
  createCredentialBodySchema,
  createdCredentialSchema,
  credentialIdSchema,
  credentialSchema,
  errorSchema,
  instanceUuidSchema,
  introspectBodySchema,
  introspectionSchema,
  issueTokenBodySchema,
  issuedTokenSchema,
  listCredentialsQuerySchema,
  listSessionsQuerySchema,
  setFallbackBodySchema,
  fallbackStatusSchema,
  serialPortsSchema,
  sessionIdSchema,
  sessionSchema,
  listTokensQuerySchema,
  purgeBodySchema,
  registerCellBodySchema,
  tokenIdSchema,
  tokenListSchema,
  tokenSchema,
} from './schemas';
import { OBJECT_VERSION_HEADER } from '../http/object-version';

const json = (schema: z.ZodType, description: string): ResponseConfig => ({
  description,
  content: { 'application/json': { schema } },
});

const errors = (...statuses: number[]): Record<number, ResponseConfig> => {
  const text: Record<number, string> = {
    400: 'INVALID_INPUT (naming the fields), UNSUPPORTED_OBJECT_VERSION, or UNROUTABLE_CONSOLE (issuing: no route allows the console host:port)',
    401: 'UNAUTHENTICATED: missing, unknown, malformed or revoked API key (always the same answer)',
    403: 'FORBIDDEN: wrong role or another cell',
    404: 'CELL_NOT_FOUND, TOKEN_NOT_FOUND, CREDENTIAL_NOT_FOUND or SESSION_NOT_FOUND',
    409: 'CELL_EXISTS, TOKEN_IN_USE, PURGE_IN_PROGRESS or FALLBACK_FORCED',
    413: 'PAYLOAD_TOO_LARGE',
    415: 'UNSUPPORTED_MEDIA_TYPE: bodies must be application/json',
    429: 'TOO_MANY_REQUESTS: too many failed authentications for this key id or from this address; retry after `Retry-After` seconds',
    503: 'CELL_DATABASE_UNREACHABLE, CELL_SCHEMA_INCOMPLETE (run `keyhole migrate`), SERVICE_UNAVAILABLE, or AUTHENTICATION_BUSY (too many key verifications waiting; `Retry-After: 1`)',
  };
  // Whatever authenticates may also be throttled.
  const answered = statuses.includes(401) ? [...statuses, 429] : statuses;
  return Object.fromEntries(answered.map((status) => [status, json(errorSchema, text[status])]));
};

const versionHeader = z.object({
  [OBJECT_VERSION_HEADER]: z
    .string()
    .optional()
    .openapi({ description: 'ConsoleAuthToken object version wanted (1.0-1.4); default the newest' }),
});

const cellPath = z.object({ cell: cellNameSchema });

/** Builds the OpenAPI 3.1 document of /v1 from the same zod schemas that validate requests. */
export function buildOpenApiDocument(): object {
  const registry = new OpenAPIRegistry();
  const bearer = registry.registerComponent('securitySchemes', 'apiKey', {
    type: 'http',
    scheme: 'bearer',
    description: 'An API key `khk_<id>_<secret>` from `keyhole credentials create` or POST /v1/credentials',
  });
  const secured: Pick<RouteConfig, 'security'> = { security: [{ [bearer.name]: [] }] };
  const route = (config: RouteConfig) => registry.registerPath({ ...secured, ...config });

  route({
    method: 'post',
    path: '/v1/cells/{cell}/tokens',
    tags: ['tokens'],
    summary: 'Issue a console token (agents of the cell, operators)',
    description: 'The token is returned once, inside accessUrl; only its SHA-256 is stored, committed before the answer.',
    request: {
      params: cellPath,
      headers: versionHeader,
      body: { content: { 'application/json': { schema: issueTokenBodySchema } } },
    },
    responses: { 201: json(issuedTokenSchema, 'The new token'), ...errors(400, 401, 403, 404, 409, 413, 415, 503) },
  });
  route({
    method: 'get',
    path: '/v1/cells/{cell}/tokens',
    tags: ['tokens'],
    summary: "List a cell's tokens, optionally of one instance (operators); never the token itself",
    request: { params: cellPath, query: listTokensQuerySchema, headers: versionHeader },
    responses: { 200: json(tokenListSchema, 'One page; pass nextAfter as `after` for the next'), ...errors(400, 401, 403, 404, 503) },
  });
  route({
    method: 'get',
    path: '/v1/cells/{cell}/tokens/{id}',
    tags: ['tokens'],
    summary: 'One token by id (operators)',
    request: { params: cellPath.extend({ id: tokenIdSchema }), headers: versionHeader },
    responses: { 200: json(tokenSchema, 'The token'), ...errors(400, 401, 403, 404, 503) },
  });
  route({
    method: 'delete',
    path: '/v1/cells/{cell}/tokens/{id}',
    tags: ['tokens'],
    summary: 'Revoke one token (agents of the cell, operators)',
    request: { params: cellPath.extend({ id: tokenIdSchema }) },
    responses: { 204: { description: 'Revoked' }, ...errors(400, 401, 403, 404, 503) },
  });
  route({
    method: 'delete',
    path: '/v1/cells/{cell}/instances/{instanceUuid}/tokens',
    tags: ['tokens'],
    summary: 'Revoke every token of an instance (agents of the cell, operators)',
    request: { params: cellPath.extend({ instanceUuid: instanceUuidSchema }) },
    responses: {
      200: json(z.object({ revoked: z.int(), ids: z.array(z.int()) }), 'How many were revoked'),
      ...errors(400, 401, 403, 404, 503),
    },
  });
  route({
    method: 'post',
    path: '/v1/cells/{cell}/tokens/purge',
    tags: ['tokens'],
    summary: 'Delete expired tokens (expires <= now): of one host (agents must name it) or all (operators)',
    request: { params: cellPath, body: { content: { 'application/json': { schema: purgeBodySchema } } } },
    responses: {
      200: json(z.object({ purged: z.int(), sessions: z.int() }), 'How many expired tokens (and, without host, old sessions) were deleted'),
      ...errors(400, 401, 403, 404, 409, 413, 415, 503),
    },
  });
  route({
    method: 'post',
    path: '/v1/tokens/introspect',
    tags: ['tokens'],
    summary: "What a presented token grants (Nova's os-console-auth-tokens), operators only",
    request: { headers: versionHeader, body: { content: { 'application/json': { schema: introspectBodySchema } } } },
    responses: {
      200: json(introspectionSchema, 'The valid authorization'),
      ...errors(400, 401, 403, 404, 413, 415, 503),
    },
  });
  route({
    method: 'get',
    path: '/v1/cells/{cell}/sessions',
    tags: ['sessions'],
    summary: "A cell's console sessions, live ones by default (operators)",
    request: { params: cellPath, query: listSessionsQuerySchema },
    responses: { 200: json(z.object({ sessions: z.array(sessionSchema) }), 'Newest first'), ...errors(400, 401, 403, 404, 503) },
  });
  route({
    method: 'delete',
    path: '/v1/cells/{cell}/sessions/{id}',
    tags: ['sessions'],
    summary: 'End a live session: its proxy closes the websocket with 1008 within a second (operators)',
    request: { params: cellPath.extend({ id: sessionIdSchema }) },
    responses: { 204: { description: 'Ended' }, ...errors(400, 401, 403, 404, 503) },
  });
  route({
    method: 'get',
    path: '/v1/cells/{cell}/instances/{instanceUuid}/serial-ports',
    tags: ['sessions'],
    summary: "Which of an instance's serial ports (from its valid serial tokens) are free (agents of the cell, operators)",
    request: { params: cellPath.extend({ instanceUuid: instanceUuidSchema }) },
    responses: { 200: json(serialPortsSchema, 'One entry per host:port'), ...errors(400, 401, 403, 404, 503) },
  });
  route({
    method: 'get',
    path: '/v1/cells/{cell}/legacy-fallback',
    tags: ['legacy'],
    summary:
      "The cell's legacy fallback flag, whether configuration forces it, its history, and legacy sessions in the last 24 h (operators)",
    request: { params: cellPath },
    responses: { 200: json(fallbackStatusSchema, 'Status'), ...errors(400, 401, 403, 404, 503) },
  });
  route({
    method: 'put',
    path: '/v1/cells/{cell}/legacy-fallback',
    tags: ['legacy'],
    summary: "Switch the cell's legacy fallback; every proxy of the cell follows within a second (operators)",
    request: { params: cellPath, body: { content: { 'application/json': { schema: setFallbackBodySchema } } } },
    responses: { 200: json(fallbackStatusSchema, 'The new status'), ...errors(400, 401, 403, 404, 409, 413, 415, 503) },
  });
  route({
    method: 'post',
    path: '/v1/cells',
    tags: ['cells'],
    summary: 'Register a cell; its database is migrated first (operators of every cell)',
    request: { body: { content: { 'application/json': { schema: registerCellBodySchema } } } },
    responses: { 201: json(cellSchema, 'The cell'), ...errors(400, 401, 403, 409, 413, 415, 503) },
  });
  route({
    method: 'get',
    path: '/v1/cells',
    tags: ['cells'],
    summary: 'List the cells (a cell-scoped operator sees its own)',
    responses: { 200: json(z.object({ cells: z.array(cellSchema) }), 'The cells'), ...errors(401, 403) },
  });
  route({
    method: 'get',
    path: '/v1/cells/{cell}',
    tags: ['cells'],
    summary: 'One cell',
    request: { params: cellPath },
    responses: { 200: json(cellSchema, 'The cell'), ...errors(400, 401, 403, 404) },
  });
  route({
    method: 'delete',
    path: '/v1/cells/{cell}',
    tags: ['cells'],
    summary: 'Unregister a cell and revoke its credentials (its database is left as it is)',
    request: { params: cellPath },
    responses: {
      200: json(z.object({ revokedCredentials: z.int() }), 'Removed'),
      ...errors(400, 401, 403, 404),
    },
  });
  route({
    method: 'post',
    path: '/v1/credentials',
    tags: ['credentials'],
    summary: 'Create an API credential; the key is shown once (operators)',
    request: { body: { content: { 'application/json': { schema: createCredentialBodySchema } } } },
    responses: { 201: json(createdCredentialSchema, 'The credential and its key'), ...errors(400, 401, 403, 404, 413, 415) },
  });
  route({
    method: 'get',
    path: '/v1/credentials',
    tags: ['credentials'],
    summary: 'List API credentials (never their keys)',
    request: { query: listCredentialsQuerySchema },
    responses: { 200: json(z.object({ credentials: z.array(credentialSchema) }), 'The credentials'), ...errors(400, 401, 403) },
  });
  route({
    method: 'delete',
    path: '/v1/credentials/{id}',
    tags: ['credentials'],
    summary: 'Revoke an API credential; refused from the next request on',
    request: { params: z.object({ id: credentialIdSchema }) },
    responses: { 204: { description: 'Revoked' }, ...errors(400, 401, 403, 404) },
  });
  registry.registerPath({
    method: 'get',
    path: '/healthz',
    tags: ['operations'],
    summary: 'Liveness',
    responses: { 200: json(z.object({ status: z.literal('ok') }), 'Alive') },
  });
  registry.registerPath({
    method: 'get',
    path: '/metrics',
    tags: ['operations'],
    summary: 'Prometheus metrics (purge rows and durations, process)',
    responses: { 200: { description: 'Prometheus text format', content: { 'text/plain': { schema: z.string() } } } },
  });
  registry.registerPath({
    method: 'get',
    path: '/readyz',
    tags: ['operations'],
    summary: 'Readiness: the control database answers',
    responses: {
      200: json(z.object({ status: z.string(), controlDatabase: z.boolean() }), 'Ready'),
      503: json(z.object({ status: z.string(), controlDatabase: z.boolean() }), 'Not ready'),
    },
  });

  return new OpenApiGeneratorV31(registry.definitions).generateDocument({
    openapi: '3.1.0',
    info: {
      title: 'keyhole token API',
      version: '1',
      description: 'Console tokens for compute agents and operators. Errors are JSON { code, message, details?, requestId }.',
    },
  });
}
