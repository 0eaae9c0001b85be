import { z } from 'zod';

/**
 * Every setting keyhole reads from the environment, with its default. Durations carry their unit
 * in the name. `process.env` is read in this lib only (`loadConfig`).
 */
const booleanFromEnv = z
  .enum(['true', 'false', '1', '0', 'yes', 'no', 'on', 'off'])
  .transform((value) => ['true', '1', 'yes', 'on'].includes(value));

const integer = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

const postgresUrl = z
  .string()
  .min(1)
  .refine((value) => /^postgres(ql)?:\/\//.test(value), 'must be a postgres:// or postgresql:// URL');

export const ENVIRONMENT_SCHEMA = z.object({
  KEYHOLE_DATABASE_URL: postgresUrl.optional(),
  KEYHOLE_DB_POOL_SIZE: integer(1, 200).default(10),
  KEYHOLE_DB_CONNECT_TIMEOUT_MS: integer(100, 120_000).default(5_000),
  KEYHOLE_DB_STATEMENT_TIMEOUT_MS: integer(100, 3_600_000).default(30_000),
  KEYHOLE_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  KEYHOLE_API_HOST: z.string().min(1).default('127.0.0.1'),
  KEYHOLE_API_PORT: integer(0, 65_535).default(7880),
  KEYHOLE_API_BODY_LIMIT_BYTES: integer(256, 1_048_576).default(16_384),
  KEYHOLE_API_TRUST_PROXY: booleanFromEnv.default(false),
  KEYHOLE_TOKEN_TTL_SECONDS: integer(1, 31_536_000).default(600),
  KEYHOLE_TOKEN_MAX_TTL_SECONDS: integer(1, 31_536_000).default(86_400),
  KEYHOLE_PURGE_BATCH_SIZE: integer(1, 100_000).default(5_000),
  KEYHOLE_CREDENTIAL_CACHE_TTL_MS: integer(0, 3_600_000).default(60_000),
  KEYHOLE_ARGON2_MEMORY_KIB: integer(8, 4_194_304).default(19_456),
  KEYHOLE_ARGON2_TIME_COST: integer(1, 100).default(2),
  KEYHOLE_ARGON2_PARALLELISM: integer(1, 64).default(1),
});

export type Environment = z.input<typeof ENVIRONMENT_SCHEMA>;
