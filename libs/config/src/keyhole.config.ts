import { availableParallelism } from 'node:os';
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
  proxy: {
    /** The cell this console proxy serves (KEYHOLE_CELL_NAME); required by the proxy. */
    cellName: string | undefined;
    /** That cell's database (KEYHOLE_CELL_DATABASE_URL); the proxy needs nothing else. */
    cellDatabaseUrl: string | undefined;
    /** Default 127.0.0.1. */
    host: string;
    /** Default 6080 (Nova's noVNC proxy port); 0 picks a free port. */
    port: number;
    /** Name of this replica in session records; default `<hostname>:<pid>`. */
    instance: string | undefined;
    /**
     * Processes that serve the port together (KEYHOLE_PROXY_WORKERS, `auto` = one per CPU). Default
     * 1. With more, a supervisor process starts them and each is a replica of its own.
     */
    workers: number;
    /** Extra hosts an Origin header may name, besides the request's own Host (Nova's allowed_origins). */
    allowedOrigins: string[];
    /** Console types this proxy serves; others get 404. Default all three. */
    consoleTypes: ('novnc' | 'spice-html5' | 'serial')[];
    /** Take the client address from X-Forwarded-For. Default false. */
    trustProxy: boolean;
    /** Upstream TCP (and CONNECT) timeout. Default 5000. */
    connectTimeoutMs: number;
    /** Websocket ping interval; a peer that misses one pong is dropped. Default 30000. */
    heartbeatIntervalMs: number;
    /** Close a session after this long without a byte either way; 0 = never. Default 3600000. */
    idleTimeoutMs: number;
    /** Longest session; 0 = unlimited. Default 86400000 (24 h). */
    maxSessionMs: number;
    /** Largest websocket message accepted from a browser. Default 1048576. */
    maxFrameBytes: number;
    /** End a session when its token expires (Nova's enforce_session_timeout). Default false. */
    enforceTokenExpiry: boolean;
    /** On SIGTERM, how long live sessions may go on before they are closed with 1001. Default 60000. */
    drainGraceMs: number;
    /** How often live sessions' last_seen_at and byte counts are written. Default 5000. */
    sessionHeartbeatMs: number;
    /** A live session not seen for this long is taken as dead (its proxy crashed). Default 30000. */
    sessionStaleMs: number;
    /** Where Debian's spice-html5 package keeps its files. Default /usr/share/spice-html5. */
    spiceHtml5Dir: string;
    /** Origins that may show the console pages in a frame (a dashboard); none by default. */
    frameAncestors: string[];
  };
  legacy: {
    /** The legacy token store (redis:// or rediss:// for TLS; password in the URL). Unset = none. */
    redisUrl: string | undefined;
    /** Value format of the legacy store: Nova consoleauth's JSON or websockify TokenRedis. Default nova. */
    format: 'nova' | 'websockify';
    /** Prepended to every key (websockify's namespace, with its colon: `ns:`). Default empty. */
    keyPrefix: string;
    /** Longest wait for Redis on a connect; past it the legacy token is refused. Default 250. */
    timeoutMs: number;
    /** Forces the per-cell fallback flag (Nova's [workarounds] enable_consoleauth); unset = the flag decides. */
    forcedFallback: boolean | undefined;
    /** Also write newly issued tokens to the legacy store (plaintext there!) for old proxies. Default false. */
    dualWrite: boolean;
  };
  purge: {
    /** How often the token API purges every cell; 0 = never. Default 300000 (Nova's 300 s). */
    intervalMs: number;
    /** Ended sessions older than this are deleted by the purge. Default 30 days. */
    sessionRetentionMs: number;
    /**
     * Pause between two batches of a purge, so that a large purge leaves part of the database's
     * CPU to other work. Default 0 (back to back).
     */
    pauseMs: number;
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
  // A misspelt variable would silently fall back to its default: name it instead.
  const unknown = Object.keys(relevant)
    .filter((name) => !(name in ENVIRONMENT_SCHEMA.shape) && !name.startsWith('KEYHOLE_TEST_'))
    .map((name) => `${name}: not a keyhole setting (misspelt?)`);
  const parsed = ENVIRONMENT_SCHEMA.safeParse(relevant);
  if (!parsed.success || unknown.length > 0) {
    throw new ConfigurationError([...unknown, ...(parsed.success ? [] : describeIssues(parsed.error))]);
  }
  const env = parsed.data;
  const problems: string[] = [];
  if (env.KEYHOLE_PROXY_SESSION_STALE_MS < 2 * env.KEYHOLE_PROXY_SESSION_HEARTBEAT_MS) {
    problems.push('KEYHOLE_PROXY_SESSION_STALE_MS: must be at least twice KEYHOLE_PROXY_SESSION_HEARTBEAT_MS');
  }
  if (env.KEYHOLE_LEGACY_DUAL_WRITE && !env.KEYHOLE_LEGACY_REDIS_URL) {
    problems.push('KEYHOLE_LEGACY_DUAL_WRITE: needs KEYHOLE_LEGACY_REDIS_URL');
  }
  if (env.KEYHOLE_LEGACY_FALLBACK === 'on' && !env.KEYHOLE_LEGACY_REDIS_URL) {
    problems.push('KEYHOLE_LEGACY_FALLBACK: on needs KEYHOLE_LEGACY_REDIS_URL');
  }
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
    proxy: {
      cellName: env.KEYHOLE_CELL_NAME,
      cellDatabaseUrl: env.KEYHOLE_CELL_DATABASE_URL,
      host: env.KEYHOLE_PROXY_HOST,
      port: env.KEYHOLE_PROXY_PORT,
      instance: env.KEYHOLE_PROXY_INSTANCE,
      workers: env.KEYHOLE_PROXY_WORKERS === 'auto' ? availableParallelism() : env.KEYHOLE_PROXY_WORKERS,
      allowedOrigins: env.KEYHOLE_PROXY_ALLOWED_ORIGINS.map((origin) => origin.toLowerCase()),
      consoleTypes: env.KEYHOLE_PROXY_CONSOLE_TYPES,
      trustProxy: env.KEYHOLE_PROXY_TRUST_PROXY,
      connectTimeoutMs: env.KEYHOLE_PROXY_CONNECT_TIMEOUT_MS,
      heartbeatIntervalMs: env.KEYHOLE_PROXY_HEARTBEAT_INTERVAL_MS,
      idleTimeoutMs: env.KEYHOLE_PROXY_IDLE_TIMEOUT_MS,
      maxSessionMs: env.KEYHOLE_PROXY_MAX_SESSION_MS,
      maxFrameBytes: env.KEYHOLE_PROXY_MAX_FRAME_BYTES,
      enforceTokenExpiry: env.KEYHOLE_PROXY_ENFORCE_TOKEN_EXPIRY,
      drainGraceMs: env.KEYHOLE_PROXY_DRAIN_GRACE_MS,
      sessionHeartbeatMs: env.KEYHOLE_PROXY_SESSION_HEARTBEAT_MS,
      sessionStaleMs: env.KEYHOLE_PROXY_SESSION_STALE_MS,
      spiceHtml5Dir: env.KEYHOLE_PROXY_SPICE_HTML5_DIR,
      frameAncestors: env.KEYHOLE_PROXY_FRAME_ANCESTORS,
    },
    legacy: {
      redisUrl: env.KEYHOLE_LEGACY_REDIS_URL,
      format: env.KEYHOLE_LEGACY_FORMAT,
      keyPrefix: env.KEYHOLE_LEGACY_KEY_PREFIX,
      timeoutMs: env.KEYHOLE_LEGACY_TIMEOUT_MS,
      forcedFallback: env.KEYHOLE_LEGACY_FALLBACK === undefined ? undefined : env.KEYHOLE_LEGACY_FALLBACK === 'on',
      dualWrite: env.KEYHOLE_LEGACY_DUAL_WRITE,
    },
    purge: {
      intervalMs: env.KEYHOLE_PURGE_INTERVAL_MS,
      pauseMs: env.KEYHOLE_PURGE_PAUSE_MS,
      sessionRetentionMs: env.KEYHOLE_SESSION_RETENTION_MS,
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

/** The proxy's cell and its database, or a clear error naming what is missing. */
export function requireProxyCell(config: KeyholeConfig): { cellName: string; cellDatabaseUrl: string } {
  const problems: string[] = [];
  if (!config.proxy.cellName) problems.push('KEYHOLE_CELL_NAME: required (the cell this proxy serves)');
  if (!config.proxy.cellDatabaseUrl) problems.push("KEYHOLE_CELL_DATABASE_URL: required (that cell's database URL)");
  if (problems.length > 0) throw new ConfigurationError(problems);
  return { cellName: config.proxy.cellName as string, cellDatabaseUrl: config.proxy.cellDatabaseUrl as string };
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
