/**
 * Jobs the orchestrator gives a load generator process (bench/loadgen.ts) over the IPC channel, and
 * their results. One generator code path serves keyhole, websockify and direct TCP alike: only the
 * target changes.
 */

/** Where a job connects. `url` may hold `{token}`, replaced per attempt (a fresh random token for invalid-token jobs). */
export type Target = { kind: 'tcp'; host: string; port: number } | { kind: 'ws'; url: string; token?: string; origin?: string };

export interface ConnectJob {
  type: 'connect';
  target: Target;
  /** valid: wait for `expectBytes` console bytes. invalid: a random token; success is being refused. */
  tokenMode: 'valid' | 'invalid';
  expectBytes: number;
  concurrency: number;
  /** Bounds: whichever comes first. */
  maxCount: number;
  durationMs: number;
  attemptTimeoutMs: number;
  /** Each loop waits this long between attempts (paced users); 0 = back to back. */
  pauseMs?: number;
}

export interface ConnectResult {
  /** Per successful attempt: from starting the TCP connect to the console's bytes (or to the refusal). */
  latenciesMs: number[];
  ok: number;
  failed: number;
  /** Failure reasons and how often. */
  failures: Record<string, number>;
  /** How invalid tokens were refused (e.g. "http 401", "closed 1011 before data"). */
  refusals: Record<string, number>;
  elapsedMs: number;
}

export interface ThroughputJob {
  type: 'throughput';
  target: Target;
  /** down: console -> client (the source upstream); up: client -> console (the sink upstream). */
  direction: 'down' | 'up';
  warmupMs: number;
  durationMs: number;
  chunkBytes: number;
}

export interface ThroughputResult {
  bytes: number;
  seconds: number;
  /** Decimal megabytes per second. */
  megabytesPerSecond: number;
}

export interface SessionsJob {
  type: 'sessions';
  target: Target;
  count: number;
  openConcurrency: number;
  /** Bound on opening all of them. */
  openTimeoutMs: number;
  attemptTimeoutMs: number;
}

/** Sent by the generator when every session is open (or the open phase gave up). */
export interface SessionsOpened {
  type: 'opened';
  opened: number;
  failed: number;
  failures: Record<string, number>;
  elapsedMs: number;
}

/** After `{ type: 'probe' }`: every session sends 4 bytes and must get them back from the echo console. */
export interface SessionsProbed {
  type: 'probed';
  alive: number;
  dead: number;
  /** Sessions that closed by themselves between opening and the probe. */
  closedDuringHold: number;
  probeMs: number;
}

export interface HttpJob {
  type: 'http';
  url: string;
  headers: Record<string, string>;
  /** issue: a token request for a random instance. introspect: a check of one of `tokens`, round robin. */
  body: { kind: 'issue'; host: string; port: number; ttlSeconds?: number } | { kind: 'introspect'; cell: string; tokens: string[] };
  /** closed: `concurrency` loops back to back. open: `ratePerSecond` on a fixed schedule, latency from the scheduled time. */
  mode: 'closed' | 'open';
  concurrency: number;
  ratePerSecond: number;
  durationMs: number;
  maxCount: number;
  expectStatus: number;
  /** Keep up to this many issued tokens from the answers. */
  collectTokens: number;
}

export interface HttpResult {
  latenciesMs: number[];
  ok: number;
  failed: number;
  failures: Record<string, number>;
  elapsedMs: number;
  /** Open loop: requests not sent because too many were still in flight (the server fell behind). */
  dropped: number;
  tokens: string[];
}

export type Job = ConnectJob | ThroughputJob | SessionsJob | HttpJob;

export type ToGenerator = { type: 'job'; id: number; job: Job } | { type: 'stop' } | { type: 'probe' } | { type: 'close' };

export type FromGenerator =
  | { type: 'result'; id: number; result: ConnectResult | ThroughputResult | HttpResult | { closed: number } }
  | { type: 'error'; id: number; message: string }
  | SessionsOpened
  | SessionsProbed
  | { type: 'ready' };
