import { z } from 'zod';
import { parseAddressRange } from './trusted-proxies';

const booleanFromEnv = z
  .enum(['true', 'false', '1', '0', 'yes', 'no', 'on', 'off'])
  .transform((value) => ['true', '1', 'yes', 'on'].includes(value));

const integer = (min: number, max: number) => z.coerce.number().int().min(min).max(max);

const postgresUrl = z
  .string()
  .min(1)
  .refine((value) => /^postgres(ql)?:\/\//.test(value), 'must be a postgres:// or postgresql:// URL');

const commaList = z.string().transform((value) =>
  value
    .split(',')
    .map((item) => item.trim())
    .filter(Boolean),
);

/** The tables of README.md's Configuration section, in the order the README shows them. */
export const SETTING_SECTIONS = ['general', 'console-proxy', 'purge-and-legacy'] as const;
export type SettingSection = (typeof SETTING_SECTIONS)[number];

/** How a setting is documented: README's table is generated from this (`npm run docs:config`). */
export interface SettingDocumentation {
  section: SettingSection;
  /** Markdown, one line: what it does, its range and unit where the name does not say it. */
  description: string;
  /** Markdown shown as the default where the schema has none to show (computed at start, or "unset" meaning something). */
  shownDefault?: string;
}

export const SETTING_DOCUMENTATION = z.registry<SettingDocumentation>();

function setting<Schema extends z.ZodType>(section: SettingSection, schema: Schema, description: string, shownDefault?: string): Schema {
  SETTING_DOCUMENTATION.add(schema, { section, description, shownDefault });
  return schema;
}

/**
 * Every setting keyhole reads from the environment: its rules, its default and its documentation,
 * in one place. Durations carry their unit in the name. `process.env` is read in this lib only
 * (`loadConfig`).
 */
export const ENVIRONMENT_SCHEMA = z.object({
  KEYHOLE_DATABASE_URL: setting(
    'general',
    postgresUrl.optional(),
    'Control database, `postgres://` or `postgresql://`. Required by the token API and every CLI command except `local`; for `local`, a server to use instead of the embedded one.',
  ),
  KEYHOLE_DB_POOL_SIZE: setting(
    'general',
    integer(1, 200).default(10),
    'Connections per pool (1-200). Every database has its own pool: the API has one for the control database and one per cell.',
  ),
  KEYHOLE_DB_CONNECT_TIMEOUT_MS: setting(
    'general',
    integer(100, 120_000).default(5_000),
    'Client-side deadline for opening a database connection, and the longest wait for a pooled one (100-120000). Past it the request fails with 503.',
  ),
  KEYHOLE_DB_QUERY_TIMEOUT_MS: setting(
    'general',
    integer(100, 600_000).default(5_000),
    "Client-side deadline for each statement's answer (100-600000): past it the caller gets 503 (the proxy refuses the upgrade with 503), the connection is thrown away, and the pool opens a new one once the database answers again. Bounds a database that stops answering without closing its connections (frozen, partitioned, disk full).",
  ),
  KEYHOLE_DB_STATEMENT_TIMEOUT_MS: setting(
    'general',
    integer(100, 600_000).default(4_000),
    "Server-side `statement_timeout` on every keyhole connection (100-600000); at most KEYHOLE_DB_QUERY_TIMEOUT_MS, so that a database that is merely slow cancels the statement itself, keeping the connection, before the client's deadline gives up on it.",
  ),
  KEYHOLE_DB_MIGRATION_TIMEOUT_MS: setting(
    'general',
    integer(1_000, 86_400_000).default(600_000),
    'Deadline of each migration statement, and of the wait for the migration lock, server- and client-side (1000-86400000): `keyhole migrate` may build indexes on large tables.',
  ),
  KEYHOLE_LOG_LEVEL: setting(
    'general',
    z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
    '`trace`, `debug`, `info`, `warn`, `error`, `fatal` or `silent`. JSON lines (pino) on stdout; the CLI logs to stderr and at `warn` when this is `info`; `keyhole local` logs to its log file.',
  ),
  KEYHOLE_API_HOST: setting(
    'general',
    z.string().min(1).default('127.0.0.1'),
    'Address the token API listens on (`0.0.0.0` in a container). `keyhole local` always uses 127.0.0.1.',
  ),
  KEYHOLE_API_PORT: setting(
    'general',
    integer(0, 65_535).default(7880),
    'Port of the token API (0-65535; 0 picks a free one). `keyhole local --api-port` overrides it.',
  ),
  KEYHOLE_API_BODY_LIMIT_BYTES: setting(
    'general',
    integer(256, 1_048_576).default(16_384),
    'Largest accepted request body (256-1048576); larger is `413 PAYLOAD_TOO_LARGE`.',
  ),
  KEYHOLE_API_TLS_CERT_FILE: setting(
    'general',
    z.string().min(1).optional(),
    "PEM certificate (chain) the token API serves HTTPS with, on its one port; needs `KEYHOLE_API_TLS_KEY_FILE`. Read at start (a file that cannot be used stops the start, naming the setting) and again on SIGHUP. Unset = plain HTTP (put a TLS-terminating proxy in front). README's TLS.",
    '(unset)',
  ),
  KEYHOLE_API_TLS_KEY_FILE: setting(
    'general',
    z.string().min(1).optional(),
    'PEM private key of `KEYHOLE_API_TLS_CERT_FILE` (unencrypted; it must match the certificate). Read again on SIGHUP.',
    '(unset)',
  ),
  KEYHOLE_API_TLS_CLIENT_CA_FILE: setting(
    'general',
    z.string().min(1).optional(),
    'PEM CA certificate(s) for client certificates: a client may then authenticate with a certificate this CA signed whose subject CN is the id of an API credential (instead of a key). A certificate this CA did not sign is refused. Unset = no client certificates. Read again on SIGHUP.',
    '(unset)',
  ),
  KEYHOLE_API_TLS_ONLY: setting(
    'general',
    booleanFromEnv.default(false),
    'With `KEYHOLE_API_TLS_CERT_FILE`: refuse plain HTTP on the port (`400 TLS_REQUIRED`). Off: the port serves HTTPS and plain HTTP (told apart by the first byte).',
  ),
  KEYHOLE_TRUSTED_PROXIES: setting(
    'general',
    commaList
      .pipe(
        z.array(
          z.string().refine((value) => parseAddressRange(value) !== null, 'each must be an address or a CIDR (10.0.0.0/8, 2001:db8::/32)'),
        ),
      )
      .default([]),
    "Comma-separated addresses or CIDRs of the front proxies (load balancer, ingress) whose `X-Forwarded-For` and `X-Forwarded-Proto` the token API and the console proxies believe. The client is the right-most `X-Forwarded-For` hop that is not one of them (logs, session records); the scheme (the proxy's origin check) is the one the proxy that faced the client set. From any other peer both headers are ignored. Unset = none: the peer is the client and the connection's scheme counts. Replaces `KEYHOLE_API_TRUST_PROXY` and `KEYHOLE_PROXY_TRUST_PROXY`.",
  ),
  KEYHOLE_TOKEN_TTL_SECONDS: setting(
    'general',
    integer(1, 31_536_000).default(600),
    "Lifetime of a console token when the agent does not ask for one (Nova's default). Must not exceed the maximum.",
  ),
  KEYHOLE_TOKEN_MAX_TTL_SECONDS: setting(
    'general',
    integer(1, 31_536_000).default(86_400),
    'Longest `ttlSeconds` an agent may ask for (1-31536000).',
  ),
  KEYHOLE_PURGE_BATCH_SIZE: setting(
    'general',
    integer(1, 100_000).default(5_000),
    'Expired rows deleted per statement by a purge (1-100000).',
  ),
  KEYHOLE_CREDENTIAL_CACHE_TTL_MS: setting(
    'general',
    integer(0, 3_600_000).default(60_000),
    'How long a verified API key is remembered, sparing argon2 on every request (0-3600000; 0 = never). Revocation is not delayed by it.',
  ),
  KEYHOLE_ARGON2_MEMORY_KIB: setting(
    'general',
    integer(8, 4_194_304).default(19_456),
    "argon2id memory for new API keys (OWASP's 19 MiB). Existing keys keep the parameters they were hashed with.",
  ),
  KEYHOLE_ARGON2_TIME_COST: setting('general', integer(1, 100).default(2), 'argon2id iterations for new API keys (1-100).'),
  KEYHOLE_ARGON2_PARALLELISM: setting('general', integer(1, 64).default(1), 'argon2id lanes for new API keys (1-64).'),
  KEYHOLE_AUTH_FAILURES_PER_KEY: setting(
    'general',
    integer(1, 1_000_000).default(10),
    'Failed authentications (unknown, revoked or wrong key) one API key id may have per `KEYHOLE_AUTH_FAILURE_WINDOW_SECONDS`; past it, requests for that id get `429 TOO_MANY_REQUESTS` with `Retry-After`, before any argon2 work, unless the key is one the API already verified (its cache). See [Authentication throttling](#authentication-throttling).',
  ),
  KEYHOLE_AUTH_FAILURES_PER_ADDRESS: setting(
    'general',
    integer(1, 1_000_000).default(30),
    'Failed authentications one client address (IPv6: its /64) may have per window, across all key ids; past it, its requests get `429` as above. The address is the one logs show (`KEYHOLE_TRUSTED_PROXIES`).',
  ),
  KEYHOLE_AUTH_FAILURE_WINDOW_SECONDS: setting(
    'general',
    integer(1, 86_400).default(60),
    'The window both failure limits count in (1-86400); a refused client may try again when the window that counted its failures ends.',
  ),
  KEYHOLE_AUTH_LIMITER: setting(
    'general',
    z.enum(['memory', 'redis', 'postgres']).default('memory'),
    "Where the failure counts live: `memory` (each API process counts its own), `redis` (`KEYHOLE_AUTH_LIMITER_REDIS_URL`, shared by every replica) or `postgres` (the control database's `auth_failures` table, shared). While the shared store fails, each process counts in memory, logs a warning and counts `keyhole_api_auth_limiter_fallbacks_total`.",
  ),
  KEYHOLE_AUTH_LIMITER_REDIS_URL: setting(
    'general',
    z
      .string()
      .refine((value) => /^rediss?:\/\//.test(value), 'must be a redis:// or rediss:// URL')
      .optional(),
    "Redis of `KEYHOLE_AUTH_LIMITER=redis`: `redis://[:password@]host:port[/db]` or `rediss://`. May be the legacy store's server; keys start with `keyhole:auth:`.",
  ),
  KEYHOLE_AUTH_LIMITER_TIMEOUT_MS: setting(
    'general',
    integer(10, 10_000).default(250),
    'Longest wait for the shared failure store per request; past it, that request is counted in memory instead.',
  ),
  KEYHOLE_ARGON2_CONCURRENCY: setting(
    'general',
    integer(1, 256).optional(),
    "argon2 verifications run at once per API process (1-256); more wait in a queue served fairly by client address (round robin), so a flood from one address does not delay others. Each running one holds `KEYHOLE_ARGON2_MEMORY_KIB` of memory. The default does not see a container's CPU quota: under a quota give a number.",
    'the number of CPUs',
  ),
  KEYHOLE_ARGON2_QUEUE: setting(
    'general',
    integer(0, 100_000).default(64),
    'Verifications that may wait for a free slot; one more is answered at once with `503 AUTHENTICATION_BUSY` and `Retry-After: 1` rather than queued.',
  ),
  KEYHOLE_ROUTES_FILE: setting(
    'general',
    z.string().min(1).optional(),
    "Routes file (YAML) of the token API and the console proxies: which consoles a proxy may dial, and how (README's Routes). A destination that matches no route gets no token and no connection. Unset = every destination is allowed (a warning at start). Read again on SIGHUP.",
  ),
  KEYHOLE_RUN_DIR: setting(
    'general',
    z.string().startsWith('/', 'must be an absolute path').default('/run/keyhole'),
    'Directory where each `keyhole connector` writes its status file (name, mode, PID, socket or addresses, connection counts), which `keyhole connector status` reads.',
  ),
  KEYHOLE_CELL_NAME: setting(
    'console-proxy',
    z
      .string()
      .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, 'lowercase letters, digits and inner dashes, at most 63')
      .optional(),
    'Required: the cell this proxy serves.',
  ),
  KEYHOLE_CELL_DATABASE_URL: setting(
    'console-proxy',
    postgresUrl.optional(),
    "Required: that cell's database. The proxy needs no other database, and no other cell's.",
  ),
  KEYHOLE_PROXY_HOST: setting('console-proxy', z.string().min(1).default('127.0.0.1'), 'Listen address (`0.0.0.0` in a container).'),
  KEYHOLE_PROXY_PORT: setting(
    'console-proxy',
    integer(0, 65_535).default(6080),
    "Listen port (Nova's noVNC proxy port); 0 picks a free one.",
  ),
  KEYHOLE_PROXY_TLS_CERT_FILE: setting(
    'console-proxy',
    z.string().min(1).optional(),
    "PEM certificate (chain) the proxy serves HTTPS and `wss://` with, on its one port (Nova's `cert`); needs `KEYHOLE_PROXY_TLS_KEY_FILE`. Read at start (a file that cannot be used stops the start, naming the setting) and again on SIGHUP, without ending live sessions. Unset = plain (a TLS-terminating proxy in front).",
    '(unset)',
  ),
  KEYHOLE_PROXY_TLS_KEY_FILE: setting(
    'console-proxy',
    z.string().min(1).optional(),
    "PEM private key of `KEYHOLE_PROXY_TLS_CERT_FILE` (Nova's `key`; unencrypted, it must match the certificate).",
    '(unset)',
  ),
  KEYHOLE_PROXY_TLS_ONLY: setting(
    'console-proxy',
    booleanFromEnv.default(false),
    "With `KEYHOLE_PROXY_TLS_CERT_FILE`: refuse plain HTTP and `ws://` upgrades (`400 TLS_REQUIRED`; Nova's `ssl_only`). Off: the port serves both, told apart by the first byte, as websockify does.",
  ),
  KEYHOLE_PROXY_INSTANCE: setting(
    'console-proxy',
    z.string().min(1).max(255).optional(),
    "This replica's name in session records; unique among the cell's running proxies and the same across restarts (a restart ends the sessions its killed run left live under it).",
    '`<hostname>:<port>`',
  ),
  KEYHOLE_PROXY_WORKERS: setting(
    'console-proxy',
    z.union([z.literal('auto'), integer(1, 256)]).default(1),
    "Processes serving the proxy's port together, or `auto` (one per CPU the process may run on; it does not see a container's CPU quota, so under a quota give a number). With more than one, a supervisor starts them, replaces one that dies and sums their `/metrics`; each worker is a replica of its own (`<name>/<n>`). `npm start`'s one-machine mode always runs one.",
  ),
  KEYHOLE_PROXY_ALLOWED_ORIGINS: setting(
    'console-proxy',
    commaList.default([]),
    "Comma-separated hosts a browser's `Origin` may name besides the request's own `Host` (Nova's `[console] allowed_origins`).",
  ),
  KEYHOLE_PROXY_CONSOLE_TYPES: setting(
    'console-proxy',
    commaList.pipe(z.array(z.enum(['novnc', 'spice-html5', 'serial'])).min(1)).default(['novnc', 'spice-html5', 'serial']),
    'Console types served; a token of another type gets 404.',
  ),
  KEYHOLE_PROXY_CONNECT_TIMEOUT_MS: setting(
    'console-proxy',
    integer(100, 120_000).default(5_000),
    'Timeout of the TCP connect (and HTTP CONNECT) to the console; with `KEYHOLE_PROXY_VNC_AUTH_SCHEMES` other than `none`, also the bound on the whole RFB security negotiation (hypervisor, TLS and browser) after it.',
  ),
  KEYHOLE_PROXY_VNC_AUTH_SCHEMES: setting(
    'console-proxy',
    commaList
      .pipe(
        z
          .array(z.enum(['none', 'vencrypt']))
          .min(1)
          .refine((schemes) => new Set(schemes).size === schemes.length, 'each scheme once'),
      )
      .default(['none']),
    "Security types the proxy may use with a VNC console's hypervisor, in order of preference (Nova's `[vnc] auth_schemes`): `none`, `vencrypt` (TLS with X.509, the hypervisor's certificate verified against `KEYHOLE_PROXY_VENCRYPT_CA_FILE`). With anything but `none` alone, the proxy negotiates RFB security with the hypervisor itself and offers the browser only `None`; a hypervisor that offers none of these is refused (1011). `none` alone: bytes are passed through untouched. README's VNC security to the hypervisor.",
  ),
  KEYHOLE_PROXY_VENCRYPT_CA_FILE: setting(
    'console-proxy',
    z.string().min(1).optional(),
    "PEM CA certificate(s) that must have signed a hypervisor's VeNCrypt certificate (Nova's `[vnc] vencrypt_ca_certs`); required when `vencrypt` is allowed. The host name is not checked, as in Nova. Read at start and again on SIGHUP.",
    '(unset)',
  ),
  KEYHOLE_PROXY_VENCRYPT_CLIENT_CERT_FILE: setting(
    'console-proxy',
    z.string().min(1).optional(),
    "PEM client certificate the proxy presents to hypervisors over VeNCrypt (Nova's `[vnc] vencrypt_client_cert`; QEMU's `verify-peer=on` requires one); needs `KEYHOLE_PROXY_VENCRYPT_CLIENT_KEY_FILE`. Read again on SIGHUP.",
    '(unset)',
  ),
  KEYHOLE_PROXY_VENCRYPT_CLIENT_KEY_FILE: setting(
    'console-proxy',
    z.string().min(1).optional(),
    "PEM private key of `KEYHOLE_PROXY_VENCRYPT_CLIENT_CERT_FILE` (Nova's `[vnc] vencrypt_client_key`; unencrypted, it must match the certificate).",
    '(unset)',
  ),
  KEYHOLE_PROXY_HEARTBEAT_INTERVAL_MS: setting(
    'console-proxy',
    integer(1_000, 3_600_000).default(30_000),
    'Websocket ping interval; a browser that misses a pong is dropped.',
  ),
  KEYHOLE_PROXY_IDLE_TIMEOUT_MS: setting(
    'console-proxy',
    integer(0, 86_400_000).default(3_600_000),
    'Close a session without a byte either way for this long (1008 `idle timeout`); 0 = never.',
  ),
  KEYHOLE_PROXY_MAX_SESSION_MS: setting(
    'console-proxy',
    integer(0, 604_800_000).default(86_400_000),
    'Longest session (1008 `session time limit`); 0 = unlimited.',
  ),
  KEYHOLE_PROXY_MAX_FRAME_BYTES: setting(
    'console-proxy',
    integer(1_024, 67_108_864).default(1_048_576),
    'Largest websocket message from a browser; larger closes with 1009.',
  ),
  KEYHOLE_PROXY_ENFORCE_TOKEN_EXPIRY: setting(
    'console-proxy',
    booleanFromEnv.default(false),
    "End a session when its token expires (1008 `token expired`; Nova's `enforce_session_timeout`).",
  ),
  KEYHOLE_PROXY_HEADERS_TIMEOUT_MS: setting(
    'console-proxy',
    integer(500, 120_000).default(5_000),
    'How long a client has, from its TCP connect, to send a whole request head (the upgrade request and its headers); a slower one gets `408` and is closed (slowloris).',
  ),
  KEYHOLE_PROXY_MAX_PENDING_PER_ADDRESS: setting(
    'console-proxy',
    integer(1, 65_536).default(32),
    'Most connections from one TCP peer address that are not yet authenticated (from accept until the upgrade is granted or the plain request answered); one more gets `429` with `Retry-After` and is closed. Per process (each of `KEYHOLE_PROXY_WORKERS` counts its own).',
  ),
  KEYHOLE_PROXY_MAX_PENDING: setting(
    'console-proxy',
    integer(1, 1_048_576).default(1_024),
    'Most connections in all that are not yet authenticated; one more gets `503` with `Retry-After` and is closed. Per process.',
  ),
  KEYHOLE_PROXY_DRAIN_GRACE_MS: setting(
    'console-proxy',
    integer(0, 3_600_000).default(60_000),
    'On SIGTERM/SIGINT: how long live sessions may go on before they are closed with 1001; meanwhile the port stays open and upgrades get `503`.',
  ),
  KEYHOLE_PROXY_SESSION_HEARTBEAT_MS: setting(
    'console-proxy',
    integer(500, 600_000).default(5_000),
    "How often live sessions' `last_seen_at` and byte counts are written (one statement for all).",
  ),
  KEYHOLE_PROXY_SESSION_STALE_MS: setting(
    'console-proxy',
    integer(1_000, 3_600_000).default(30_000),
    "A live session not seen for this long is taken as dead (its proxy crashed or lost the database): it stops holding its serial port, and the token API's reaper ends it with `proxy lost`. Set it the same on the API and the proxies; at least twice the heartbeat.",
  ),
  KEYHOLE_PROXY_SESSION_WRITE_QUEUE: setting(
    'console-proxy',
    integer(100, 1_000_000).default(10_000),
    'Most session records and ends a proxy keeps while the database does not take them (retried with backoff until they land); past it the newest are dropped, counted and logged, the oldest kept.',
  ),
  KEYHOLE_PROXY_SPICE_HTML5_DIR: setting(
    'console-proxy',
    z.string().default('/usr/share/spice-html5'),
    "Where Debian's `spice-html5` package keeps its client; not there = no SPICE pages.",
  ),
  KEYHOLE_PROXY_FRAME_ANCESTORS: setting(
    'console-proxy',
    commaList
      .pipe(z.array(z.string().regex(/^https?:\/\/[A-Za-z0-9.-]+(:\d{1,5})?$/, 'an origin such as https://dashboard.example.com')))
      .default([]),
    "Comma-separated origins (`https://horizon.example.com`) that may show the console pages in a frame, as Horizon's console tab does; none by default.",
  ),
  KEYHOLE_PURGE_INTERVAL_MS: setting(
    'purge-and-legacy',
    integer(0, 86_400_000).default(300_000),
    "How often the token API purges every cell (Nova's 300 s); 0 = never (then use the CLI or API).",
  ),
  KEYHOLE_SESSION_REAP_INTERVAL_MS: setting(
    'purge-and-legacy',
    integer(0, 3_600_000).default(10_000),
    "How often the token API ends, in every cell, the live sessions not seen for `KEYHOLE_PROXY_SESSION_STALE_MS` (reason `proxy lost`; one replica per cell); 0 = never. A killed proxy's sessions end within the stale time plus this.",
  ),
  KEYHOLE_PURGE_PAUSE_MS: setting(
    'purge-and-legacy',
    integer(0, 10_000).default(0),
    'Pause between two batches of a purge (0-10000 ms); 0 = back to back.',
  ),
  KEYHOLE_SESSION_RETENTION_MS: setting(
    'purge-and-legacy',
    integer(0, 31_536_000_000).default(2_592_000_000),
    'Ended console sessions older than this (30 days) are deleted by the purge; 0 = keep.',
  ),
  KEYHOLE_LEGACY_REDIS_URL: setting(
    'purge-and-legacy',
    z
      .string()
      .refine((value) => /^rediss?:\/\//.test(value), 'must be a redis:// or rediss:// URL')
      .optional(),
    'The legacy token store: `redis://[:password@]host:port[/db]`, or `rediss://` for TLS. Unset = no legacy store.',
  ),
  KEYHOLE_LEGACY_FORMAT: setting(
    'purge-and-legacy',
    z.enum(['nova', 'websockify', 'oslo-cache-redis']).default('nova'),
    '`nova` (consoleauth: key = token, JSON value, TTL = expiry, per-instance lists), `websockify` (TokenRedis: `{"host":"HOST:PORT"}` or `HOST:PORT`) or `oslo-cache-redis` (consoleauth through oslo.cache\'s `dogpile.cache.redis` backend: key = sha1 hex of the token, value = dogpile `metadata|pickle`; see the legacy fallback section).',
  ),
  KEYHOLE_LEGACY_OSLO_CACHE_EXPIRATION_SECONDS: setting(
    'purge-and-legacy',
    // Any whole number nova.conf's token_ttl (an IntOpt without maximum) may have held, up to 2^31-1.
    integer(1, 2_147_483_647).default(600),
    "`oslo-cache-redis` only: an entry is expired once its dogpile creation time is older than this. Set it to Nova's `[consoleauth] token_ttl` (which consoleauth made its cache regions' expiration time).",
  ),
  KEYHOLE_LEGACY_KEY_PREFIX: setting(
    'purge-and-legacy',
    z.string().max(128).default(''),
    "Prepended to every key; websockify's namespace goes here with its colon (`ns:`).",
  ),
  KEYHOLE_LEGACY_TIMEOUT_MS: setting(
    'purge-and-legacy',
    integer(10, 10_000).default(250),
    'Longest wait for Redis on a connect; past it a legacy token is refused (503). Database tokens never wait for Redis.',
  ),
  KEYHOLE_LEGACY_FALLBACK: setting(
    'purge-and-legacy',
    z.enum(['on', 'off']).optional(),
    "`on` or `off` forces every cell's fallback flag (Nova's `[workarounds] enable_consoleauth`); the API then reports it forced and refuses to change it. Set it the same on the API and the proxies.",
    '(unset)',
  ),
  KEYHOLE_LEGACY_DUAL_WRITE: setting(
    'purge-and-legacy',
    booleanFromEnv.default(false),
    "Also write every token the API issues into the legacy store, and delete an instance's legacy tokens when they are revoked, for proxies that know only that store during a rolling upgrade. **This stores plaintext tokens in Redis**, as the legacy systems did.",
  ),
});

export type Environment = z.input<typeof ENVIRONMENT_SCHEMA>;
