import { Clock, fingerprintOfHash, instanceUuidSchema, isPlausibleToken, KeyholeError, sha256Hex, systemClock } from '@keyhole/core';
import { Redis, RedisOptions } from 'ioredis';
import {
  LegacyAuthorization,
  LegacyFormat,
  LegacyWrite,
  MAX_LEGACY_VALUE_BYTES,
  novaTokenValue,
  parseLegacyValue,
  websockifyTokenValue,
} from './legacy-formats';
import { LegacyStoreFailure, LegacyStoreUnavailable } from './legacy-store.errors';

export interface LegacyTokenStoreOptions {
  /** `redis://` or `rediss://` (TLS, verified against the system CAs); credentials and db number in the URL. */
  redisUrl: string;
  /** Value format of the store: Nova consoleauth's JSON or websockify TokenRedis. */
  format: LegacyFormat;
  /** Prepended to every key (websockify's namespace with its colon, `ns:`); may be empty. */
  keyPrefix: string;
  /** Longest wait for one Redis answer, in ms; past it the call throws LegacyStoreUnavailable. */
  timeoutMs: number;
  /** Where "now" comes from for `expiresAt`; the system clock by default. */
  clock?: Clock;
}

/** The part of a logger the store uses: `(fields, message)`, as Nest's `Logger` takes them. */
export interface LegacyStoreLogger {
  warn(fields: Record<string, unknown>, message: string): void;
  log?(fields: Record<string, unknown>, message: string): void;
}

/** How many keys one SCAN step asks for. */
const SCAN_COUNT = 100;
/** Longest per-instance list kept by `write` (oldest entries are dropped first). */
const MAX_LISTED_TOKENS = 1000;
/** Longest TTL `write` accepts: a year. */
const MAX_TTL_SECONDS = 366 * 24 * 3600;
/** Reconnection back-off: 50 ms doubling, capped so a returning Redis is used again within about a second. */
const RECONNECT_BASE_MS = 50;
const RECONNECT_CAP_MS = 1000;

/*
 * Nova format, dual-write: the token key, then the per-instance list, in one Lua script so that two
 * writes for the same instance cannot lose each other's entry (consoleauth's get-then-set could).
 * Like consoleauth it prunes listed tokens whose keys are gone; the list lives as long as its
 * longest-lived token (no TTL if one has none). The script reads token keys it cannot declare, so it
 * needs a standalone Redis (not Cluster), which is what legacy stores are.
 *
 * KEYS[1] token key, KEYS[2] list key; ARGV[1] token value, ARGV[2] TTL in ms, ARGV[3] token,
 * ARGV[4] key prefix, ARGV[5] longest list. Returns {pruned, 1 if the old list was malformed}.
 */
const NOVA_WRITE_SCRIPT = `
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local listTtl = tonumber(ARGV[2])
local persist = false
local kept = {}
local pruned = 0
local malformed = 0
local raw = redis.pcall('GET', KEYS[2])
if type(raw) == 'table' and raw.err then
  malformed = 1
elseif raw then
  local ok, listed = pcall(cjson.decode, raw)
  if not ok or type(listed) ~= 'table' or (next(listed) ~= nil and listed[1] == nil) then
    malformed = 1
  else
    local max = tonumber(ARGV[5])
    local first = math.max(1, #listed - max + 2)
    pruned = first - 1
    for i = first, #listed do
      local token = listed[i]
      if type(token) == 'string' and token ~= ARGV[3] then
        local remaining = redis.call('PTTL', ARGV[4] .. token)
        if remaining == -2 then
          pruned = pruned + 1
        else
          table.insert(kept, token)
          if remaining == -1 then persist = true elseif remaining > listTtl then listTtl = remaining end
        end
      end
    end
  end
end
table.insert(kept, ARGV[3])
if persist then
  redis.call('SET', KEYS[2], cjson.encode(kept))
else
  redis.call('SET', KEYS[2], cjson.encode(kept), 'PX', listTtl)
end
return {pruned, malformed}
`;

/*
 * Nova format, instance deletion (consoleauth's delete_tokens_for_instance): deletes the listed
 * tokens that are this instance's (a listed key holding anything else is left alone), then the
 * list. Never a DEL without keys: Redis answers an arity error, which broke Nova (bug 1794812).
 * A list key holding something other than a JSON array is not ours to delete.
 *
 * KEYS[1] list key; ARGV[1] key prefix, ARGV[2] instance UUID (lowercase).
 * Returns {deleted token keys, 1 if the list was malformed}.
 */
const NOVA_DELETE_INSTANCE_SCRIPT = `
local raw = redis.pcall('GET', KEYS[1])
if not raw then return {0, 0} end
if type(raw) == 'table' and raw.err then return {0, 1} end
local ok, listed = pcall(cjson.decode, raw)
if not ok or type(listed) ~= 'table' or (next(listed) ~= nil and listed[1] == nil) then return {0, 1} end
local keys = {}
for _, token in ipairs(listed) do
  if type(token) == 'string' and token ~= '' then
    local key = ARGV[1] .. token
    local value = redis.pcall('GET', key)
    if type(value) == 'string' then
      local parsed, entry = pcall(cjson.decode, value)
      if parsed and type(entry) == 'table' and type(entry.instance_uuid) == 'string' and string.lower(entry.instance_uuid) == ARGV[2] then
        table.insert(keys, key)
      end
    end
  end
end
local deleted = 0
for first = 1, #keys, 500 do
  deleted = deleted + redis.call('DEL', unpack(keys, first, math.min(first + 499, #keys)))
end
redis.call('DEL', KEYS[1])
return {deleted, 0}
`;

/**
 * The one place keyhole talks to a legacy Redis token store (Nova consoleauth's or websockify's
 * TokenRedis), for the legacy fallback, dual-write and `keyhole legacy import`.
 *
 * Fails fast rather than waits: commands are never queued while disconnected, each one has
 * `timeoutMs`, and every failure is a LegacyStoreUnavailable. The client reconnects by itself
 * (capped back-off) when Redis comes back. Tokens never reach a log or an error: only their
 * fingerprint (first 12 hex of sha256).
 */
export class LegacyTokenStore {
  private readonly redis: Redis;
  private readonly format: LegacyFormat;
  private readonly keyPrefix: string;
  private readonly clock: Clock;
  private lastSucceeded = false;
  /** Set while an outage has been logged, so a reconnect loop logs once, not every second. */
  private outageLogged = false;

  constructor(
    options: LegacyTokenStoreOptions,
    private readonly logger?: LegacyStoreLogger,
  ) {
    if (!/^rediss?:\/\//i.test(options.redisUrl)) {
      throw new KeyholeError('INVALID_INPUT', 'The legacy store URL must be a redis:// or rediss:// URL');
    }
    if (!Number.isInteger(options.timeoutMs) || options.timeoutMs <= 0) {
      throw new KeyholeError('INVALID_INPUT', 'The legacy store timeout must be a positive number of milliseconds');
    }
    this.format = options.format;
    this.keyPrefix = options.keyPrefix;
    this.clock = options.clock ?? systemClock;

    const redisOptions: RedisOptions = {
      lazyConnect: false,
      // Fail fast while disconnected instead of queueing: a proxy would rather refuse a legacy token now.
      enableOfflineQueue: false,
      // Commands caught by a dropped connection fail at once rather than being resent after a reconnect.
      maxRetriesPerRequest: 0,
      commandTimeout: options.timeoutMs,
      // A (TLS) handshake may need longer than one lookup; lookups fail fast meanwhile anyway.
      connectTimeout: Math.max(options.timeoutMs, 2000),
      // A Redis that stops answering altogether (not just slow) gets its socket dropped and reconnected.
      socketTimeout: Math.max(options.timeoutMs * 4, 1000),
      retryStrategy: (attempt) => Math.min(RECONNECT_BASE_MS * 2 ** Math.min(attempt, 10), RECONNECT_CAP_MS),
      connectionName: 'keyhole-legacy-store',
      // close() during a reconnect must not hold the process for ioredis's default 2 s.
      disconnectTimeout: 200,
      // ioredis 6 speaks RESP3 by default; legacy stores may be older Redis, and every reply used
      // here (strings, integers, arrays) has the same shape in RESP2, which every version speaks.
      protocol: 2,
    };
    // ioredis only turns TLS on for a lowercase `rediss://`; be explicit whatever the case.
    if (/^rediss:/i.test(options.redisUrl)) redisOptions.tls = {};
    this.redis = new Redis(options.redisUrl, redisOptions);

    // Without an 'error' listener ioredis prints every failed reconnect; log the outage once instead.
    // Messages are ioredis's own (ECONNREFUSED host:port, NOAUTH...): never a key, value or password.
    this.redis.on('error', (error: Error) => {
      this.lastSucceeded = false;
      if (this.outageLogged) return;
      this.outageLogged = true;
      this.logger?.warn({ format: this.format, reason: truncate(error.message) }, 'legacy token store unreachable');
    });
    this.redis.on('close', () => {
      this.lastSucceeded = false;
    });
    this.redis.on('ready', () => {
      this.lastSucceeded = true;
      if (this.outageLogged) {
        this.outageLogged = false;
        this.logger?.log?.({ format: this.format }, 'legacy token store reachable again');
      }
    });
  }

  /** true when the last command succeeded (or the connection just became ready); for readiness and status. */
  get healthy(): boolean {
    return this.lastSucceeded;
  }

  /**
   * Looks a presented token up: one round trip (GETRANGE + PTTL pipelined). null when absent,
   * expired, or malformed (logged with the token's fingerprint and the field at fault, never the
   * token). Tokens longer than 256 characters or with a non-printable character return null without
   * asking Redis. Throws LegacyStoreUnavailable when Redis cannot answer within timeoutMs.
   */
  async lookup(token: string): Promise<LegacyAuthorization | null> {
    if (!isPlausibleToken(token)) return null;
    const key = this.keyPrefix + token;
    // GETRANGE bounds what Redis sends: one byte past the limit is enough to know a value is too big.
    const results = await this.run(() => this.redis.pipeline().getrangeBuffer(key, 0, MAX_LEGACY_VALUE_BYTES).pttl(key).exec());
    const [valueResult, ttlResult] = pipelineResults(results, 2);
    if (ttlResult.error) throw this.unavailable(ttlResult.error);
    const ttlMs = ttlResult.value;
    if (typeof ttlMs !== 'number') throw this.unavailable(new Error('unexpected PTTL reply'));
    if (ttlMs === -2) return null; // no such key, or it expired between the two commands

    if (valueResult.error) {
      if (isWrongType(valueResult.error)) {
        this.warnMalformed(token, 'value', 'not a string key');
        return null;
      }
      throw this.unavailable(valueResult.error);
    }
    if (!Buffer.isBuffer(valueResult.value)) throw this.unavailable(new Error('unexpected GETRANGE reply'));

    const parsed = parseLegacyValue(this.format, valueResult.value, token);
    if (parsed.kind === 'instance-list') {
      // Someone presented an instance UUID: a Nova per-instance list, not a token.
      this.warnMalformed(token, 'value', 'a per-instance token list, not a token');
      return null;
    }
    if (parsed.kind === 'malformed') {
      this.warnMalformed(token, parsed.field, parsed.reason);
      return null;
    }
    return { ...parsed.authorization, expiresAt: this.expiresAt(ttlMs) };
  }

  /**
   * Dual-writes a token keyhole issued, in the configured format, with Redis TTL = ttlSeconds.
   * Nova format also appends it to the instance's JSON list (pruning tokens whose keys are gone, as
   * consoleauth did); websockify format writes `{"host":"HOST:PORT"}` (IPv6 in brackets).
   */
  async write(token: string, authorization: LegacyWrite, ttlSeconds: number): Promise<void> {
    if (!isPlausibleToken(token)) {
      throw new KeyholeError('INVALID_INPUT', 'A legacy token must be 1..256 printable ASCII characters');
    }
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > MAX_TTL_SECONDS) {
      throw new KeyholeError('INVALID_INPUT', 'A legacy token TTL must be a whole number of seconds, at least 1');
    }
    const key = this.keyPrefix + token;
    if (this.format === 'websockify') {
      const value = websockifyTokenValue(authorization.host, authorization.port);
      await this.run(() => this.redis.set(key, value, 'EX', ttlSeconds));
      return;
    }
    const instanceUuid = this.instanceUuid(authorization.instanceUuid);
    const value = novaTokenValue(token, { ...authorization, instanceUuid }, this.clock.nowMs());
    const listKey = this.keyPrefix + instanceUuid;
    const reply = await this.run(() =>
      this.redis.eval(NOVA_WRITE_SCRIPT, 2, key, listKey, value, ttlSeconds * 1000, token, this.keyPrefix, MAX_LISTED_TOKENS),
    );
    if (Array.isArray(reply) && reply[1] === 1) {
      this.logger?.warn({ instance: instanceUuid }, 'legacy per-instance token list was malformed; replaced');
    }
  }

  /**
   * Nova format: deletes the instance's tokens listed under its list key, then the list, and returns
   * how many token keys were deleted. Never a DEL with zero keys (Nova bug 1794812). websockify
   * format: there is no per-instance index; returns 0 without asking Redis.
   */
  async deleteInstance(instanceUuid: string): Promise<number> {
    if (this.format === 'websockify') return 0;
    const uuid = this.instanceUuid(instanceUuid);
    const reply = await this.run(() => this.redis.eval(NOVA_DELETE_INSTANCE_SCRIPT, 1, this.keyPrefix + uuid, this.keyPrefix, uuid));
    if (!Array.isArray(reply) || typeof reply[0] !== 'number') throw this.unavailable(new Error('unexpected script reply'));
    if (reply[1] === 1) {
      this.logger?.warn({ instance: uuid }, 'legacy per-instance token list is malformed; left alone');
    }
    return reply[0];
  }

  /**
   * Every live legacy token under keyPrefix, with its authorization and remaining TTL (whole
   * seconds, rounded down; null when the key has no TTL); for `keyhole legacy import`. SCAN with a
   * bounded COUNT, one pipelined round trip per step; Nova's per-instance lists, keys that are not
   * strings and keys that cannot be tokens are skipped silently, malformed values with a warning.
   * A token is yielded once even if SCAN returns its key twice.
   */
  async *scan(): AsyncIterable<{ token: string; authorization: LegacyAuthorization; ttlSeconds: number | null }> {
    const pattern = `${escapeGlob(this.keyPrefix)}*`;
    const seen = new Set<string>();
    let cursor = '0';
    do {
      const [next, keys] = await this.run(() => this.redis.scan(cursor, 'MATCH', pattern, 'COUNT', SCAN_COUNT));
      cursor = next;
      const candidates = keys.filter((key) => key.startsWith(this.keyPrefix) && !seen.has(key) && isPlausibleToken(key.slice(this.keyPrefix.length)));
      if (candidates.length === 0) continue;
      const pipeline = this.redis.pipeline();
      for (const key of candidates) pipeline.getrangeBuffer(key, 0, MAX_LEGACY_VALUE_BYTES).pttl(key);
      const results = pipelineResults(await this.run(() => pipeline.exec()), candidates.length * 2);
      for (const [index, key] of candidates.entries()) {
        seen.add(key);
        const valueResult = results[index * 2];
        const ttlResult = results[index * 2 + 1];
        if (ttlResult.error) throw this.unavailable(ttlResult.error);
        const ttlMs = ttlResult.value;
        if (typeof ttlMs !== 'number' || ttlMs === -2) continue;
        if (valueResult.error) {
          if (isWrongType(valueResult.error)) continue;
          throw this.unavailable(valueResult.error);
        }
        if (!Buffer.isBuffer(valueResult.value)) continue;
        const token = key.slice(this.keyPrefix.length);
        const parsed = parseLegacyValue(this.format, valueResult.value, token);
        if (parsed.kind === 'instance-list') continue;
        if (parsed.kind === 'malformed') {
          this.warnMalformed(token, parsed.field, parsed.reason);
          continue;
        }
        yield {
          token,
          authorization: { ...parsed.authorization, expiresAt: this.expiresAt(ttlMs) },
          ttlSeconds: ttlMs >= 0 ? Math.floor(ttlMs / 1000) : null,
        };
      }
    } while (cursor !== '0');
  }

  /** Closes the connection and stops reconnecting. Later calls throw LegacyStoreUnavailable. */
  async close(): Promise<void> {
    this.lastSucceeded = false;
    if (this.redis.status === 'ready') {
      try {
        await this.redis.quit();
        return;
      } catch {
        // Fall through: drop the connection without waiting.
      }
    }
    this.redis.disconnect();
  }

  /** Runs Redis commands, turning every failure into LegacyStoreUnavailable and tracking health. */
  private async run<T>(commands: () => Promise<T>): Promise<T> {
    let result: T;
    try {
      result = await commands();
    } catch (error) {
      throw this.unavailable(error);
    }
    this.lastSucceeded = true;
    return result;
  }

  private unavailable(error: unknown): LegacyStoreUnavailable {
    this.lastSucceeded = false;
    // The cause is deliberately not kept: ioredis errors carry the command's arguments (the key, i.e. the token).
    return new LegacyStoreUnavailable(failureOf(error));
  }

  private expiresAt(ttlMs: number): number | null {
    return ttlMs >= 0 ? Math.floor((this.clock.nowMs() + ttlMs) / 1000) : null;
  }

  private instanceUuid(value: string): string {
    const parsed = instanceUuidSchema.safeParse(value);
    if (!parsed.success) throw new KeyholeError('INVALID_INPUT', 'The instance must be a UUID');
    return parsed.data;
  }

  private warnMalformed(token: string, field: string, reason: string): void {
    this.logger?.warn(
      { fingerprint: fingerprintOfHash(sha256Hex(token)), format: this.format, field, reason },
      'legacy token value is malformed; ignored',
    );
  }
}

type PipelineResult = { error: Error | null; value: unknown };

/** ioredis pipeline replies as `{error, value}`, checking that every command answered. */
function pipelineResults(results: [Error | null, unknown][] | null, expected: number): PipelineResult[] {
  if (!results || results.length !== expected) throw new LegacyStoreUnavailable('error');
  return results.map(([error, value]) => ({ error, value }));
}

function isWrongType(error: Error): boolean {
  return error.message.startsWith('WRONGTYPE');
}

function failureOf(error: unknown): LegacyStoreFailure {
  if (error instanceof LegacyStoreUnavailable) return error.reason;
  if (!(error instanceof Error)) return 'error';
  if (error.message === 'Command timed out') return 'timeout';
  if (error.name === 'ReplyError') {
    // Only Redis's error code (NOAUTH, LOADING, READONLY...): some messages quote the arguments.
    const code = /^[A-Z]+/.exec(error.message)?.[0];
    return code ? `reply ${code}` : 'error';
  }
  const code = (error as { code?: unknown }).code;
  if (
    error.name === 'MaxRetriesPerRequestError' ||
    error.message.startsWith("Stream isn't writeable") ||
    error.message === 'Connection is closed.' ||
    (typeof code === 'string' && /^E[A-Z]+$/.test(code))
  ) {
    return 'disconnected';
  }
  return 'error';
}

/** Escapes SCAN MATCH's glob characters so the prefix matches literally. */
function escapeGlob(value: string): string {
  return value.replace(/[*?[\]\\]/g, '\\$&');
}

function truncate(message: string): string {
  return message.length > 200 ? `${message.slice(0, 200)}...` : message;
}
