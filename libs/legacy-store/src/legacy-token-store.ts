import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Clock, fingerprintOfHash, instanceUuidSchema, isPlausibleToken, KeyholeError, sha256Hex, systemClock } from '@keyhole/core';
import { Redis, RedisOptions } from 'ioredis';
import {
  isOsloCacheKey,
  LegacyAuthorization,
  LegacyFormat,
  LegacyWrite,
  MAX_LEGACY_VALUE_BYTES,
  novaTokenJsonForPython,
  novaTokenListForPython,
  novaTokenValue,
  osloCacheKey,
  osloCacheValue,
  parseLegacyValue,
  parseOsloCacheValue,
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
  /**
   * `oslo-cache-redis` only: the expiration time of consoleauth's cache regions, in seconds (its
   * `[consoleauth] token_ttl`, 600 by default). An entry is gone once its dogpile creation time is
   * older than this, whether or not the key has a Redis TTL.
   */
  osloCacheExpirationSeconds?: number;
  /** Where "now" comes from for `expiresAt`; the system clock by default. */
  clock?: Clock;
}

/** The part of a logger the store uses: `(fields, message)`, as Nest's `Logger` takes them. */
export interface LegacyStoreLogger {
  warn(fields: Record<string, unknown>, message: string): void;
  log?(fields: Record<string, unknown>, message: string): void;
}

/** Why `scan` passed over a legacy entry; `keyhole legacy import` reports them. */
export type LegacySkipReason = 'expired' | 'malformed' | 'not-a-token';

/** One entry `scan` found: a live token, or an entry it could not take and why. */
export type LegacyScanEntry =
  | { kind: 'token'; token: string; authorization: LegacyAuthorization; ttlSeconds: number | null }
  | { kind: 'skipped'; reason: LegacySkipReason };

/** consoleauth's `[consoleauth] token_ttl` default, which it also made its cache regions' expiration time. */
export const DEFAULT_OSLO_CACHE_EXPIRATION_SECONDS = 600;
/** How often `write` re-reads an instance's oslo.cache list that changed under it before giving up. */
const LIST_WRITE_ATTEMPTS = 10;
/** Keys of keyhole's own (the auth limiter's) that may share the legacy store's Redis: never legacy tokens. */
const KEYHOLE_OWN_KEY_PREFIX = 'keyhole:';

/** How many keys one SCAN step asks for. */
const SCAN_COUNT = 100;
/** Longest per-instance list kept by `write` (oldest entries are dropped first). */
const MAX_LISTED_TOKENS = 1000;
/** Longest TTL `write` accepts: a year. */
const MAX_TTL_SECONDS = 366 * 24 * 3600;
/** Reconnection back-off: 50 ms doubling, capped so a returning Redis is used again within about a second. */
const RECONNECT_BASE_MS = 50;
const RECONNECT_CAP_MS = 1000;

/**
 * The Lua scripts of the Nova format (`lua/*.lua` beside this module; the build copies them into
 * dist/), as ioredis commands (defineCommand): the first call on a connection sends EVAL, later ones
 * EVALSHA, and a NOSCRIPT answer (SCRIPT FLUSH, a failover) is retried as EVAL. What each script does
 * and takes is written at its top.
 */
interface LegacyScripts {
  /** lua/nova-write.lua: the token key and the instance's list. Replies `[pruned, malformed 0|1]`. */
  novaWrite(
    tokenKey: string,
    listKey: string,
    value: string,
    ttlMs: number,
    token: string,
    keyPrefix: string,
    maxListed: number,
  ): Promise<unknown>;
  /** lua/nova-delete-instance.lua: the instance's listed tokens, then its list. Replies `[deleted, malformed 0|1]`. */
  novaDeleteInstance(listKey: string, keyPrefix: string, instanceUuid: string): Promise<unknown>;
  /** lua/oslo-cache-set-if-unchanged.lua: compare-and-set of an instance's list. Replies 1 (written) or 0. */
  osloCacheSetIfUnchanged(
    listKey: string,
    existed: '0' | '1',
    read: Buffer,
    value: Buffer,
    ttlMs: number,
    lastOffset: number,
  ): Promise<unknown>;
}

function readScript(name: string): string {
  return readFileSync(join(__dirname, 'lua', `${name}.lua`), 'utf8');
}

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
  private readonly redis: Redis & LegacyScripts;
  private readonly format: LegacyFormat;
  private readonly keyPrefix: string;
  private readonly osloCacheExpirationSeconds: number;
  private readonly clock: Clock;
  private lastSucceeded = false;
  /** oslo-cache-redis list writes in flight, per list key: one at a time per process (the CAS covers other processes). */
  private readonly listWrites = new Map<string, Promise<void>>();
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
    this.osloCacheExpirationSeconds = options.osloCacheExpirationSeconds ?? DEFAULT_OSLO_CACHE_EXPIRATION_SECONDS;
    if (!Number.isInteger(this.osloCacheExpirationSeconds) || this.osloCacheExpirationSeconds < 1) {
      throw new KeyholeError('INVALID_INPUT', 'The oslo.cache expiration time must be a whole number of seconds, at least 1');
    }
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
    if (/^rediss:/i.test(options.redisUrl)) {
      redisOptions.tls = {};
    }
    const redis = new Redis(options.redisUrl, redisOptions);
    redis.defineCommand('novaWrite', { numberOfKeys: 2, lua: readScript('nova-write') });
    redis.defineCommand('novaDeleteInstance', { numberOfKeys: 1, lua: readScript('nova-delete-instance') });
    redis.defineCommand('osloCacheSetIfUnchanged', { numberOfKeys: 1, lua: readScript('oslo-cache-set-if-unchanged') });
    this.redis = redis as Redis & LegacyScripts;

    // Without an 'error' listener ioredis prints every failed reconnect; log the outage once instead.
    // Messages are ioredis's own (ECONNREFUSED host:port, NOAUTH...): never a key, value or password.
    this.redis.on('error', (error: Error) => {
      this.lastSucceeded = false;
      if (this.outageLogged) {
        return;
      }
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
    if (!isPlausibleToken(token)) {
      return null;
    }
    const key = this.keyOf(token);
    // GETRANGE bounds what Redis sends: one byte past the limit is enough to know a value is too big.
    const results = await this.run(() => this.redis.pipeline().getrangeBuffer(key, 0, MAX_LEGACY_VALUE_BYTES).pttl(key).exec());
    const [valueResult, ttlResult] = pipelineResults(results, 2);
    if (ttlResult.error) {
      throw this.unavailable(ttlResult.error);
    }
    const ttlMs = ttlResult.value;
    if (typeof ttlMs !== 'number') {
      throw this.unavailable(new Error('unexpected PTTL reply'));
    }
    if (ttlMs === -2) {
      return null;
    } // no such key, or it expired between the two commands

    if (valueResult.error) {
      if (isWrongType(valueResult.error)) {
        this.warnMalformed(token, 'value', 'not a string key');
        return null;
      }
      throw this.unavailable(valueResult.error);
    }
    if (!Buffer.isBuffer(valueResult.value)) {
      throw this.unavailable(new Error('unexpected GETRANGE reply'));
    }

    if (this.format === 'oslo-cache-redis') {
      const entry = this.readOsloCacheEntry(key.slice(this.keyPrefix.length), valueResult.value, ttlMs);
      if (entry.kind === 'instance-list') {
        this.warnMalformed(token, 'value', 'a per-instance token list, not a token');
        return null;
      }
      if (entry.kind === 'skipped') {
        // Expired is the ordinary end of a token, not a fault to log.
        if (entry.reason !== 'expired') {
          this.warnMalformed(token, entry.field, entry.detail);
        }
        return null;
      }
      return entry.authorization;
    }
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
    if (this.format === 'oslo-cache-redis') {
      await this.writeOsloCache(token, authorization, ttlSeconds);
      return;
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
      this.redis.novaWrite(key, listKey, value, ttlSeconds * 1000, token, this.keyPrefix, MAX_LISTED_TOKENS),
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
    if (this.format === 'websockify') {
      return 0;
    }
    if (this.format === 'oslo-cache-redis') {
      return this.deleteOsloCacheInstance(this.instanceUuid(instanceUuid));
    }
    const uuid = this.instanceUuid(instanceUuid);
    const reply = await this.run(() => this.redis.novaDeleteInstance(this.keyPrefix + uuid, this.keyPrefix, uuid));
    if (!Array.isArray(reply) || typeof reply[0] !== 'number') {
      throw this.unavailable(new Error('unexpected script reply'));
    }
    if (reply[1] === 1) {
      this.logger?.warn({ instance: uuid }, 'legacy per-instance token list is malformed; left alone');
    }
    return reply[0];
  }

  /**
   * Every legacy entry under keyPrefix, for `keyhole legacy import`: each live token with its
   * authorization and remaining lifetime (whole seconds, rounded down; null when the key has no TTL
   * and the format no expiry of its own), and each entry it could not take with the reason
   * (`expired`, `malformed`, `not-a-token`: a key that is not a string, or an oslo.cache entry
   * that is not a pickled str). SCAN with a bounded COUNT, one pipelined round trip per step.
   * Passed over without a word: Nova's per-instance lists, keys that cannot be tokens (or, for
   * oslo-cache-redis, sha1 hex), keyhole's own `keyhole:` keys, keys gone meanwhile. A key is
   * reported once even if SCAN returns it twice. Malformed values are also logged (fingerprint).
   */
  async *scan(): AsyncIterable<LegacyScanEntry> {
    const osloCache = this.format === 'oslo-cache-redis';
    // oslo.cache keys are sha1 hex: MATCH says so, which keeps other keys of a shared Redis out.
    const pattern = `${escapeGlob(this.keyPrefix)}${osloCache ? '[0-9a-f]'.repeat(40) : '*'}`;
    const seen = new Set<string>();
    let cursor = '0';
    do {
      const [next, keys] = await this.run(() => this.redis.scan(cursor, 'MATCH', pattern, 'COUNT', SCAN_COUNT));
      cursor = next;
      const candidates = keys.filter((key) => {
        if (!key.startsWith(this.keyPrefix) || seen.has(key)) {
          return false;
        }
        const rest = key.slice(this.keyPrefix.length);
        return osloCache ? isOsloCacheKey(rest) : isPlausibleToken(rest) && !key.startsWith(KEYHOLE_OWN_KEY_PREFIX);
      });
      if (candidates.length === 0) {
        continue;
      }
      const pipeline = this.redis.pipeline();
      for (const key of candidates) {
        pipeline.getrangeBuffer(key, 0, MAX_LEGACY_VALUE_BYTES).pttl(key);
      }
      const results = pipelineResults(await this.run(() => pipeline.exec()), candidates.length * 2);
      for (const [index, key] of candidates.entries()) {
        seen.add(key);
        const valueResult = results[index * 2];
        const ttlResult = results[index * 2 + 1];
        if (ttlResult.error) {
          throw this.unavailable(ttlResult.error);
        }
        const ttlMs = ttlResult.value;
        if (typeof ttlMs !== 'number' || ttlMs === -2) {
          continue;
        }
        if (valueResult.error) {
          if (isWrongType(valueResult.error)) {
            yield { kind: 'skipped', reason: 'not-a-token' };
            continue;
          }
          throw this.unavailable(valueResult.error);
        }
        if (!Buffer.isBuffer(valueResult.value)) {
          continue;
        }
        const rest = key.slice(this.keyPrefix.length);
        if (osloCache) {
          const entry = this.readOsloCacheEntry(rest, valueResult.value, ttlMs);
          if (entry.kind === 'instance-list') {
            continue;
          }
          if (entry.kind === 'skipped') {
            if (entry.reason === 'malformed') {
              this.logger?.warn(
                // The token is unknown here (that is the fault); 12 hex of its key's sha1 find the key (SCAN MATCH).
                { keyHashPrefix: rest.slice(0, 12), format: this.format, field: entry.field, reason: entry.detail },
                'legacy token value is malformed; ignored',
              );
            }
            yield { kind: 'skipped', reason: entry.reason };
            continue;
          }
          const remainingMs = entry.expiresAtMs - this.clock.nowMs();
          yield {
            kind: 'token',
            token: entry.token,
            authorization: entry.authorization,
            ttlSeconds: Math.max(0, Math.floor(remainingMs / 1000)),
          };
          continue;
        }
        const parsed = parseLegacyValue(this.format, valueResult.value, rest);
        if (parsed.kind === 'instance-list') {
          continue;
        }
        if (parsed.kind === 'malformed') {
          this.warnMalformed(rest, parsed.field, parsed.reason);
          yield { kind: 'skipped', reason: 'malformed' };
          continue;
        }
        yield {
          kind: 'token',
          token: rest,
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

  /** Where a token is kept: keyPrefix + the token, or + its sha1 hex for oslo-cache-redis. */
  private keyOf(token: string): string {
    return this.keyPrefix + (this.format === 'oslo-cache-redis' ? osloCacheKey(token) : token);
  }

  /**
   * An oslo.cache entry and when it stops counting: the earlier of its Redis TTL (if any) and
   * dogpile's creation time + the expiration time, which is what consoleauth's reader checked
   * (dogpile ignores the TTL; Redis drops the key at it).
   */
  private readOsloCacheEntry(keyHash: string, raw: Buffer, ttlMs: number): OsloCacheEntry {
    const parsed = parseOsloCacheValue(raw, keyHash);
    if (parsed.kind === 'malformed') {
      return { kind: 'skipped', reason: 'malformed', field: parsed.field, detail: parsed.reason };
    }
    if (parsed.kind === 'not-a-token') {
      return { kind: 'skipped', reason: 'not-a-token', field: 'pickle', detail: parsed.reason };
    }
    const nowMs = this.clock.nowMs();
    const dogpileExpiryMs = (parsed.createdAt + this.osloCacheExpirationSeconds) * 1000;
    const expiresAtMs = ttlMs >= 0 ? Math.min(nowMs + ttlMs, dogpileExpiryMs) : dogpileExpiryMs;
    if (parsed.kind === 'instance-list') {
      return { kind: 'instance-list', tokens: parsed.tokens, expiresAtMs };
    }
    if (expiresAtMs <= nowMs) {
      return { kind: 'skipped', reason: 'expired', field: 'metadata', detail: 'expired' };
    }
    return {
      kind: 'authorization',
      token: parsed.token,
      authorization: { ...parsed.authorization, expiresAt: Math.floor(expiresAtMs / 1000) },
      expiresAtMs,
    };
  }

  /**
   * oslo-cache-redis dual-write, as consoleauth's authorize_console: the token's entry (dogpile
   * `metadata|pickle` of its JSON dict), then the instance's list with the expired or missing
   * tokens pruned and this one appended. Both get a Redis TTL (dogpile's reader ignores it; it
   * spares Redis the dead entries), and `ct` is set so that ct + the expiration time is the token's
   * expiry: a consoleauth reader then drops it exactly when keyhole does. The list is written by
   * compare-and-set (re-read up to LIST_WRITE_ATTEMPTS times) and lives as long as its longest-lived token.
   */
  private async writeOsloCache(token: string, authorization: LegacyWrite, ttlSeconds: number): Promise<void> {
    const instanceUuid = this.instanceUuid(authorization.instanceUuid);
    const nowMs = this.clock.nowMs();
    const expiresAtMs = nowMs + ttlSeconds * 1000;
    const tokenValue = osloCacheValue(
      novaTokenJsonForPython(token, { ...authorization, instanceUuid }, nowMs),
      this.osloCacheCreatedAtFor(expiresAtMs),
    );
    await this.run(() => this.redis.set(this.keyOf(token), tokenValue, 'PX', ttlSeconds * 1000));

    const listKey = this.keyPrefix + osloCacheKey(instanceUuid);
    const previous = this.listWrites.get(listKey) ?? Promise.resolve();
    const current = previous.then(() => this.appendToOsloCacheList(listKey, instanceUuid, token, nowMs, expiresAtMs));
    const settled = current.catch(() => undefined);
    this.listWrites.set(listKey, settled);
    try {
      await current;
    } finally {
      if (this.listWrites.get(listKey) === settled) {
        this.listWrites.delete(listKey);
      }
    }
  }

  /** The dogpile `ct` that makes ct + the expiration time land on `expiresAtMs` (epoch seconds, may lie ahead). */
  private osloCacheCreatedAtFor(expiresAtMs: number): number {
    return expiresAtMs / 1000 - this.osloCacheExpirationSeconds;
  }

  /** The list part of writeOsloCache: read, prune, append, compare-and-set; re-read when another process wrote meanwhile. */
  private async appendToOsloCacheList(
    listKey: string,
    instanceUuid: string,
    token: string,
    nowMs: number,
    expiresAtMs: number,
  ): Promise<void> {
    for (let attempt = 1; attempt <= LIST_WRITE_ATTEMPTS; attempt += 1) {
      const [readResult, ttlResult] = pipelineResults(
        await this.run(() => this.redis.pipeline().getrangeBuffer(listKey, 0, MAX_LEGACY_VALUE_BYTES).pttl(listKey).exec()),
        2,
      );
      const existed = ttlResult.value !== -2 && !readResult.error && Buffer.isBuffer(readResult.value);
      if (readResult.error && !isWrongType(readResult.error)) {
        throw this.unavailable(readResult.error);
      }
      const read = existed ? (readResult.value as Buffer) : Buffer.alloc(0);
      let listed: string[] = [];
      if (existed) {
        const entry = this.readOsloCacheEntry(osloCacheKey(instanceUuid), read, ttlResult.value as number);
        if (entry.kind === 'instance-list') {
          listed = entry.tokens;
        } else if (entry.kind !== 'skipped' || entry.reason !== 'expired') {
          this.logger?.warn({ instance: instanceUuid }, 'legacy per-instance token list was malformed; replaced');
        }
      } else if (readResult.error) {
        this.logger?.warn({ instance: instanceUuid }, 'legacy per-instance token list was malformed; replaced');
      }
      const others = [...new Set(listed.filter((listedToken) => listedToken !== token))].slice(-(MAX_LISTED_TOKENS - 1));
      const kept: string[] = [];
      let listExpiresAtMs = expiresAtMs;
      if (others.length > 0) {
        const pipeline = this.redis.pipeline();
        for (const other of others) {
          pipeline.getrangeBuffer(this.keyOf(other), 0, MAX_LEGACY_VALUE_BYTES).pttl(this.keyOf(other));
        }
        const results = pipelineResults(await this.run(() => pipeline.exec()), others.length * 2);
        for (const [index, other] of others.entries()) {
          const value = results[index * 2].value;
          const otherTtlMs = results[index * 2 + 1].value;
          if (!Buffer.isBuffer(value) || typeof otherTtlMs !== 'number' || otherTtlMs === -2) {
            continue; // gone: consoleauth's get_multi returned None for it
          }
          const entry = this.readOsloCacheEntry(osloCacheKey(other), value, otherTtlMs);
          if (entry.kind === 'skipped' && entry.reason === 'expired') {
            continue;
          }
          kept.push(other);
          if (entry.kind === 'authorization') {
            listExpiresAtMs = Math.max(listExpiresAtMs, entry.expiresAtMs);
          }
        }
      }
      kept.push(token);
      const listValue = osloCacheValue(novaTokenListForPython(kept), this.osloCacheCreatedAtFor(listExpiresAtMs));
      const written = await this.run(() =>
        this.redis.osloCacheSetIfUnchanged(
          listKey,
          existed ? '1' : '0',
          read,
          listValue,
          Math.max(1, Math.ceil(listExpiresAtMs - nowMs)),
          MAX_LEGACY_VALUE_BYTES,
        ),
      );
      if (written === 1) {
        return;
      }
    }
    throw this.unavailable(new Error('the per-instance list kept changing'));
  }

  /**
   * oslo-cache-redis, as consoleauth's delete_tokens_for_instance: the listed tokens whose entries
   * are this instance's (a listed key holding anything else is left alone), then the list, in one
   * DEL (never without keys: Nova bug 1794812). A malformed list is left alone and logged.
   */
  private async deleteOsloCacheInstance(instanceUuid: string): Promise<number> {
    const listKey = this.keyPrefix + osloCacheKey(instanceUuid);
    const raw = await this.run(() => this.redis.getrangeBuffer(listKey, 0, MAX_LEGACY_VALUE_BYTES)).catch((error: unknown) => {
      if (error instanceof LegacyStoreUnavailable && error.reason === 'reply WRONGTYPE') {
        return null;
      }
      throw error;
    });
    if (raw === null || raw.length === 0) {
      return 0;
    }
    // Expiry does not matter here: an expired list still names keys that may linger.
    const parsed = parseOsloCacheValue(raw, osloCacheKey(instanceUuid));
    if (parsed.kind !== 'instance-list') {
      this.logger?.warn({ instance: instanceUuid }, 'legacy per-instance token list is malformed; left alone');
      return 0;
    }
    const listed = [...new Set(parsed.tokens)];
    const owned: string[] = [];
    if (listed.length > 0) {
      const values = await this.run(() => this.redis.mgetBuffer(...listed.map((token) => this.keyOf(token))));
      for (const [index, token] of listed.entries()) {
        const value = values[index];
        if (!value) {
          continue;
        }
        const entry = parseOsloCacheValue(value, osloCacheKey(token));
        if (entry.kind === 'authorization' && entry.authorization.instanceUuid === instanceUuid) {
          owned.push(this.keyOf(token));
        }
      }
    }
    const deleted = await this.run(() => this.redis.del(...owned, listKey));
    return Math.max(0, deleted - 1);
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
    if (!parsed.success) {
      throw new KeyholeError('INVALID_INPUT', 'The instance must be a UUID');
    }
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

/** An oslo.cache entry as readOsloCacheEntry sees it; `expiresAtMs` is epoch ms. */
type OsloCacheEntry =
  | { kind: 'authorization'; token: string; authorization: LegacyAuthorization; expiresAtMs: number }
  | { kind: 'instance-list'; tokens: string[]; expiresAtMs: number }
  | { kind: 'skipped'; reason: LegacySkipReason; field: string; detail: string };

/** ioredis pipeline replies as `{error, value}`, checking that every command answered. */
function pipelineResults(results: [Error | null, unknown][] | null, expected: number): PipelineResult[] {
  if (!results || results.length !== expected) {
    throw new LegacyStoreUnavailable('error');
  }
  return results.map(([error, value]) => ({ error, value }));
}

function isWrongType(error: Error): boolean {
  return error.message.startsWith('WRONGTYPE');
}

function failureOf(error: unknown): LegacyStoreFailure {
  if (error instanceof LegacyStoreUnavailable) {
    return error.reason;
  }
  if (!(error instanceof Error)) {
    return 'error';
  }
  if (error.message === 'Command timed out') {
    return 'timeout';
  }
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
