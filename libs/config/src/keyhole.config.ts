import { z } from 'zod';
import { ENVIRONMENT_SCHEMA } from './config.schema';

/** Validated configuration of a keyhole process; built once at start by `loadConfig`. */
export interface KeyholeConfig {
  database: {
    /** Control database URL; required by the token API and most CLI commands. */
    controlUrl: string | undefined;
    /** Connections per pool; every cell has its own pool of this size. Default 10. */
    poolSize: number;
    /** Default 5000. */
    connectTimeoutMs: number;
    /** Server-side statement timeout on every keyhole connection. Default 30000. */
    statementTimeoutMs: number;
  };
  log: { level: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent' };
  api: {
    /** Default 127.0.0.1. */
    host: string;
    /** Default 7880; 0 picks a free port. */
    port: number;
    /** Largest accepted request body. Default 16384. */
    bodyLimitBytes: number;
    /** Take the client address from X-Forwarded-For. Default false. */
    trustProxy: boolean;
  };
  tokens: {
    /** Lifetime of a console token when the agent does not ask for one. Default 600 (Nova's). */
    defaultTtlSeconds: number;
    /** Longest lifetime an agent may ask for. Default 86400. */
    maxTtlSeconds: number;
    /** Expired rows deleted per statement by a purge. Default 5000. */
    purgeBatchSize: number;
  };
  credentials: {
    /** How long a verified API key is remembered, sparing argon2 on every request. Default 60000. */
    cacheTtlMs: number;
    /** argon2id parameters for new API keys; defaults are OWASP's (19 MiB, t=2, p=1). */
    argon2: { memoryKib: number; timeCost: number; parallelism: number };
  };
}

export const KEYHOLE_CONFIG = Symbol('keyhole.config');

export class ConfigurationError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid keyhole configuration:\n${problems.map((problem) => `  - ${problem}`).join('\n')}`);
    this.name = 'ConfigurationError';
  }
}

/**
 * Reads and validates every KEYHOLE_* variable at once; throws one ConfigurationError naming every
 * bad variable. Empty strings count as unset, so `KEYHOLE_X=` falls back to the default.
 */
export function loadConfig(environment: NodeJS.ProcessEnv = process.env): KeyholeConfig {
  const relevant: Record<string, string> = {};
  for (const [name, value] of Object.entries(environment)) {
    if (name.startsWith('KEYHOLE_') && value !== undefined && value !== '') relevant[name] = value;
  }
  const parsed = ENVIRONMENT_SCHEMA.safeParse(relevant);
  if (!parsed.success) {
    throw new ConfigurationError(describeIssues(parsed.error));
  }
  const env = parsed.data;
  const problems: string[] = [];
  if (env.KEYHOLE_TOKEN_TTL_SECONDS > env.KEYHOLE_TOKEN_MAX_TTL_SECONDS) {
    problems.push('KEYHOLE_TOKEN_TTL_SECONDS: must not exceed KEYHOLE_TOKEN_MAX_TTL_SECONDS');
  }
  if (problems.length > 0) throw new ConfigurationError(problems);
  return {
    database: {
      controlUrl: env.KEYHOLE_DATABASE_URL,
      poolSize: env.KEYHOLE_DB_POOL_SIZE,
      connectTimeoutMs: env.KEYHOLE_DB_CONNECT_TIMEOUT_MS,
      statementTimeoutMs: env.KEYHOLE_DB_STATEMENT_TIMEOUT_MS,
    },
    log: { level: env.KEYHOLE_LOG_LEVEL },
    api: {
      host: env.KEYHOLE_API_HOST,
      port: env.KEYHOLE_API_PORT,
      bodyLimitBytes: env.KEYHOLE_API_BODY_LIMIT_BYTES,
      trustProxy: env.KEYHOLE_API_TRUST_PROXY,
    },
    tokens: {
      defaultTtlSeconds: env.KEYHOLE_TOKEN_TTL_SECONDS,
      maxTtlSeconds: env.KEYHOLE_TOKEN_MAX_TTL_SECONDS,
      purgeBatchSize: env.KEYHOLE_PURGE_BATCH_SIZE,
    },
    credentials: {
      cacheTtlMs: env.KEYHOLE_CREDENTIAL_CACHE_TTL_MS,
      argon2: {
        memoryKib: env.KEYHOLE_ARGON2_MEMORY_KIB,
        timeCost: env.KEYHOLE_ARGON2_TIME_COST,
        parallelism: env.KEYHOLE_ARGON2_PARALLELISM,
      },
    },
  };
}

/** The control database URL, or a clear error for commands that cannot work without it. */
export function requireControlUrl(config: KeyholeConfig): string {
  if (!config.database.controlUrl) {
    throw new ConfigurationError(['KEYHOLE_DATABASE_URL: required (the control database URL)']);
  }
  return config.database.controlUrl;
}

function describeIssues(error: z.ZodError): string[] {
  // Values are not echoed: a database URL may hold a password.
  return error.issues.map((issue) => `${issue.path.join('.') || '(environment)'}: ${issue.message}`);
}
