import { extendZodWithOpenApi } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';
import {
  absoluteUrlSchema,
  cellNameSchema as sharedCellNameSchema,
  CONSOLE_TYPES,
  consoleHostSchema as sharedConsoleHostSchema,
  credentialNameSchema,
  ERROR_CODES,
  instanceUuidSchema as sharedInstanceUuidSchema,
  portSchema,
  postgresUrlSchema,
} from '@keyhole/core';
import { OBJECT_VERSIONS } from '@keyhole/tokens';

extendZodWithOpenApi(z);

/*
 * Every request and response shape of /v1, used both to validate requests and to generate the
 * OpenAPI document, so the two cannot drift apart.
 */

// Schemas from @keyhole/core were built before extendZodWithOpenApi ran: use them as they are.
export const cellNameSchema = sharedCellNameSchema;

export const instanceUuidSchema = sharedInstanceUuidSchema;

export const tokenIdSchema = z
  .string()
  .regex(/^[1-9][0-9]{0,14}$/, 'must be a positive integer')
  .transform(Number)
  .openapi({ type: 'integer', example: 42 });

export const consoleHostSchema = sharedConsoleHostSchema;

const httpUrl = absoluteUrlSchema;

export const consoleTypeSchema = z.enum(CONSOLE_TYPES);

export const issueTokenBodySchema = z
  .strictObject({
    instanceUuid: instanceUuidSchema,
    consoleType: consoleTypeSchema,
    host: consoleHostSchema,
    port: portSchema,
    tlsPort: portSchema.nullable().optional(),
    internalAccessPath: z
      .string()
      .min(1)
      .max(1024)
      .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces')
      .nullable()
      .optional(),
    ttlSeconds: z.int().min(1).max(31_536_000).optional(),
  })
  .openapi('IssueTokenRequest');

/** A page size in a query string: 1-1000. */
const limitQuerySchema = z
  .string()
  .regex(/^[0-9]{1,4}$/, 'must be an integer')
  .transform(Number)
  .pipe(z.number().min(1).max(1000));

export const listTokensQuerySchema = z
  .strictObject({
    instanceUuid: instanceUuidSchema.optional(),
    after: tokenIdSchema.optional(),
    limit: limitQuerySchema.optional(),
  })
  .openapi('ListTokensQuery');

export const listSessionsQuerySchema = z
  .strictObject({
    live: z
      .enum(['true', 'false'])
      .transform((value) => value === 'true')
      .optional(),
    instanceUuid: instanceUuidSchema.optional(),
    limit: limitQuerySchema.optional(),
  })
  .openapi('ListSessionsQuery');

export const sessionIdSchema = z.uuid('must be a session id (UUID)').transform((value) => value.toLowerCase());

export const setFallbackBodySchema = z.strictObject({ enabled: z.boolean() }).openapi('SetLegacyFallbackRequest');

export const fallbackStatusSchema = z
  .object({
    cell: z.string(),
    enabled: z.boolean(),
    forced: z.boolean(),
    flag: z.object({ enabled: z.boolean(), changedBy: z.string(), changedAt: z.string() }).nullable(),
    history: z.array(z.object({ enabled: z.boolean(), changedBy: z.string(), changedAt: z.string() })),
    legacySessionsLast24h: z.int(),
  })
  .openapi('LegacyFallbackStatus');

export const purgeBodySchema = z.strictObject({ host: consoleHostSchema.optional() }).openapi('PurgeTokensRequest');

export const introspectBodySchema = z
  .strictObject({
    token: z.string().min(1).max(256),
    cell: cellNameSchema.optional(),
  })
  .openapi('IntrospectTokenRequest');

export const registerCellBodySchema = z
  .strictObject({
    name: cellNameSchema,
    databaseUrl: postgresUrlSchema,
    proxyUrl: httpUrl(['http', 'https']),
    accessUrlBases: z
      .strictObject(
        Object.fromEntries(CONSOLE_TYPES.map((type) => [type, httpUrl(['http', 'https', 'ws', 'wss']).optional()])) as Record<
          (typeof CONSOLE_TYPES)[number],
          z.ZodOptional<z.ZodString>
        >,
      )
      .optional(),
  })
  .openapi('RegisterCellRequest');

export const createCredentialBodySchema = z
  .strictObject({
    name: credentialNameSchema,
    role: z.enum(['agent', 'operator']),
    cell: cellNameSchema.nullable().optional(),
  })
  .refine((body) => body.role !== 'agent' || typeof body.cell === 'string', {
    message: 'an agent credential needs a cell',
    path: ['cell'],
  })
  .openapi('CreateCredentialRequest');

export const credentialIdSchema = z.string().regex(/^[0-9a-f]{16}$/, 'must be 16 lowercase hex characters');

export const listCredentialsQuerySchema = z.strictObject({
  includeRevoked: z
    .enum(['true', 'false'])
    .transform((value) => value === 'true')
    .optional(),
});

/* Responses (documentation only; handlers build them from lib views). */

export const errorSchema = z
  .object({
    code: z.enum(ERROR_CODES),
    message: z.string(),
    details: z.record(z.string(), z.unknown()).optional(),
    requestId: z.string(),
  })
  .openapi('Error');

export const tokenSchema = z
  .object({
    objectVersion: z.enum(OBJECT_VERSIONS),
    id: z.int(),
    consoleType: z.string(),
    host: z.string(),
    port: z.int(),
    internalAccessPath: z.string().nullable(),
    instanceUuid: z.string(),
    accessUrlBase: z.string().nullable(),
    createdAt: z.string().nullable(),
    updatedAt: z.string().nullable(),
    expires: z.int().optional().openapi({ description: 'epoch seconds; since object version 1.2' }),
    expiresAt: z.string().optional().openapi({ description: 'ISO 8601; since object version 1.2' }),
    tlsPort: z.int().nullable().optional().openapi({ description: 'since object version 1.3' }),
    issuedBy: z.string().nullable().optional().openapi({ description: 'since object version 1.4' }),
    fingerprint: z.string().optional().openapi({ description: 'first 12 hex of sha256(token); since 1.4' }),
  })
  .openapi('ConsoleAuthToken');

export const issuedTokenSchema = tokenSchema
  .extend({
    cell: z.string(),
    token: z.string().openapi({ description: 'the plaintext token; shown once, never stored' }),
    accessUrl: z.string(),
  })
  .openapi('IssuedToken');

export const tokenListSchema = z.object({ tokens: z.array(tokenSchema), nextAfter: z.int().nullable() }).openapi('TokenList');

export const introspectionSchema = z
  .object({
    cell: z.string(),
    console: z.object({
      instance_uuid: z.string(),
      host: z.string(),
      port: z.int(),
      internal_access_path: z.string().nullable(),
      tls_port: z.int().nullable().optional(),
    }),
    authorization: tokenSchema,
  })
  .openapi('TokenIntrospection');

export const sessionSchema = z
  .object({
    id: z.string(),
    tokenId: z.int().nullable(),
    tokenSource: z.enum(['database', 'legacy']),
    fingerprint: z.string(),
    instanceUuid: z.string(),
    consoleType: z.string(),
    host: z.string(),
    port: z.int(),
    proxyInstance: z.string(),
    clientAddress: z.string().nullable(),
    route: z
      .string()
      .nullable()
      .openapi({ description: "The route of the proxy's routes file that reached the console; null without a routes file" }),
    startedAt: z.string(),
    lastSeenAt: z.string(),
    endedAt: z.string().nullable(),
    closeReason: z.string().nullable(),
    bytesToClient: z.int(),
    bytesToConsole: z.int(),
  })
  .openapi('ConsoleSession');

export const serialPortsSchema = z
  .object({ ports: z.array(z.object({ host: z.string(), port: z.int(), free: z.boolean(), sessionId: z.string().nullable() })) })
  .openapi('SerialPorts');

export const cellSchema = z
  .object({
    name: z.string(),
    proxyUrl: z.string(),
    accessUrlBases: z.record(z.string(), z.string()),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .openapi('Cell');

export const credentialSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    role: z.enum(['agent', 'operator']),
    cell: z.string().nullable(),
    createdAt: z.string(),
    lastUsedAt: z.string().nullable(),
    revokedAt: z.string().nullable(),
  })
  .openapi('Credential');

export const createdCredentialSchema = z
  .object({ credential: credentialSchema, key: z.string().openapi({ description: 'shown once' }) })
  .openapi('CreatedCredential');
