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

const commaList = z
  .string()
  .transform((value) => value.split(',').map((item) => item.trim()).filter(Boolean));

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
  KEYHOLE_CELL_NAME: z
    .string()
    .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'lowercase letters, digits and inner dashes, at most 63')
    .optional(),
  KEYHOLE_CELL_DATABASE_URL: postgresUrl.optional(),
  KEYHOLE_PROXY_HOST: z.string().min(1).default('127.0.0.1'),
  KEYHOLE_PROXY_PORT: integer(0, 65_535).default(6080),
  KEYHOLE_PROXY_INSTANCE: z.string().min(1).max(255).optional(),
  KEYHOLE_PROXY_WORKERS: z.union([z.literal('auto'), integer(1, 256)]).default(1),
  KEYHOLE_PROXY_ALLOWED_ORIGINS: commaList.default([]),
  KEYHOLE_PROXY_CONSOLE_TYPES: commaList
    .pipe(z.array(z.enum(['novnc', 'spice-html5', 'serial'])).min(1))
    .default(['novnc', 'spice-html5', 'serial']),
  KEYHOLE_PROXY_TRUST_PROXY: booleanFromEnv.default(false),
  KEYHOLE_PROXY_CONNECT_TIMEOUT_MS: integer(100, 120_000).default(5_000),
  KEYHOLE_PROXY_HEARTBEAT_INTERVAL_MS: integer(1_000, 3_600_000).default(30_000),
  KEYHOLE_PROXY_IDLE_TIMEOUT_MS: integer(0, 86_400_000).default(3_600_000),
  KEYHOLE_PROXY_MAX_SESSION_MS: integer(0, 604_800_000).default(86_400_000),
  KEYHOLE_PROXY_MAX_FRAME_BYTES: integer(1_024, 67_108_864).default(1_048_576),
  KEYHOLE_PROXY_ENFORCE_TOKEN_EXPIRY: booleanFromEnv.default(false),
  KEYHOLE_PROXY_DRAIN_GRACE_MS: integer(0, 3_600_000).default(60_000),
  KEYHOLE_PROXY_SESSION_HEARTBEAT_MS: integer(500, 600_000).default(5_000),
  KEYHOLE_PROXY_SESSION_STALE_MS: integer(1_000, 3_600_000).default(30_000),
  KEYHOLE_PROXY_SPICE_HTML5_DIR: z.string().default('/usr/share/spice-html5'),
  KEYHOLE_PROXY_FRAME_ANCESTORS: commaList
    .pipe(z.array(z.string().regex(/^https?:\/\/[A-Za-z0-9.-]+(:\d{1,5})?$/, 'an origin such as https://dashboard.example.com')))
    .default([]),
  KEYHOLE_LEGACY_REDIS_URL: z
    .string()
    .refine((value) => /^rediss?:\/\//.test(value), 'must be a redis:// or rediss:// URL')
    .optional(),
  KEYHOLE_LEGACY_FORMAT: z.enum(['nova', 'websockify']).default('nova'),
  KEYHOLE_LEGACY_KEY_PREFIX: z.string().max(128).default(''),
  KEYHOLE_LEGACY_TIMEOUT_MS: integer(10, 10_000).default(250),
  KEYHOLE_LEGACY_FALLBACK: z.enum(['on', 'off']).optional(),
  KEYHOLE_LEGACY_DUAL_WRITE: booleanFromEnv.default(false),
  KEYHOLE_PURGE_INTERVAL_MS: integer(0, 86_400_000).default(300_000),
  KEYHOLE_PURGE_PAUSE_MS: integer(0, 10_000).default(0),
  KEYHOLE_SESSION_RETENTION_MS: integer(0, 31_536_000_000).default(2_592_000_000),
});

export type Environment = z.input<typeof ENVIRONMENT_SCHEMA>;
