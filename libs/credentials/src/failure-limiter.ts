import type { Redis } from 'ioredis';
import type { Pool } from 'pg';
import { RateLimiterAbstract, RateLimiterMemory, RateLimiterPostgres, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';

/** Why an attempt was refused before its key was verified; a label value of the refusals metric. */
export type ThrottleReason = 'rate_limited_key' | 'rate_limited_address';

export interface ThrottleRefusal {
  reason: ThrottleReason;
  /** Whole seconds until the window that counted the failures ends (at least 1). */
  retryAfterSeconds: number;
}

/** An attempt that may go on to argon2; `release` gives its point back when the key was right. */
export interface ThrottleGrant {
  release(): Promise<void>;
}

/** Where the counts of several API replicas meet; absent = each process counts in memory. */
export type SharedFailureStore = { kind: 'redis'; client: Redis } | { kind: 'postgres'; pool: Pool };

export interface FailureLimiterOptions {
  failuresPerKey: number;
  failuresPerAddress: number;
  windowSeconds: number;
  shared?: SharedFailureStore;
  /** Longest wait for the shared store; past it the attempt is counted in memory. */
  sharedTimeoutMs: number;
  /**
   * Called each time the shared store failed and the local count was used instead; `first` is true
   * for the first failure of an outage.
   */
  onSharedStoreFailure: (error: unknown, first: boolean) => void;
  /** Called when the shared store answers again after a failure. */
  onSharedStoreRecovered: () => void;
}

/** Table of the `postgres` store, created by the control database's migrations. */
export const AUTH_FAILURES_TABLE = 'auth_failures';

/**
 * Limits failed authentications per API key id and per client address, with rate-limiter-flexible
 * (fixed windows). Every attempt that would reach argon2 first reserves one point of both counts
 * (address first: a flood from one address must not use up the points of the key ids it tries);
 * an attempt whose key turns out right gives its points back, so only failures count. A count
 * that is spent refuses the attempt before any argon2 work, and the refusal reserves nothing.
 *
 * With a shared store (Redis or the control database), the counts are the same on every replica.
 * When that store fails or is slower than `sharedTimeoutMs`, the attempt is counted in this
 * process's memory instead: guessing stays limited (per replica) and nobody is locked out by an
 * outage of a store that is not needed to authenticate.
 */
export class FailureLimiter {
  private readonly perAddress: FailureCounter;
  private readonly perKey: FailureCounter;

  constructor(options: FailureLimiterOptions) {
    const health = new SharedStoreHealth(options);
    this.perAddress = new FailureCounter('address', options.failuresPerAddress, options, health);
    this.perKey = new FailureCounter('key', options.failuresPerKey, options, health);
  }

  /** Reserves one failure of `keyId` and of `addressKey`; a refusal when either count is spent. */
  async reserve(keyId: string, addressKey: string): Promise<ThrottleGrant | ThrottleRefusal> {
    const address = await this.perAddress.reserve(addressKey);
    if (!address.granted) {
      return { reason: 'rate_limited_address', retryAfterSeconds: address.retryAfterSeconds };
    }
    const key = await this.perKey.reserve(keyId);
    if (!key.granted) {
      await address.release();
      return { reason: 'rate_limited_key', retryAfterSeconds: key.retryAfterSeconds };
    }
    return {
      release: async () => {
        await Promise.all([address.release(), key.release()]);
      },
    };
  }
}

type Reservation = { granted: true; release: () => Promise<void> } | { granted: false; retryAfterSeconds: number };

/** Logs the shared store's outage once and its recovery once, however many counts fail. */
class SharedStoreHealth {
  private failing = false;

  constructor(private readonly options: FailureLimiterOptions) {}

  failed(error: unknown): void {
    this.options.onSharedStoreFailure(error, !this.failing);
    this.failing = true;
  }

  succeeded(): void {
    if (this.failing) {
      this.failing = false;
      this.options.onSharedStoreRecovered();
    }
  }
}

/** One count (per key id or per address): the shared store when there is one, memory otherwise or meanwhile. */
class FailureCounter {
  private readonly shared: RateLimiterAbstract | undefined;
  private readonly local: RateLimiterMemory;

  constructor(
    name: 'key' | 'address',
    points: number,
    private readonly options: FailureLimiterOptions,
    private readonly health: SharedStoreHealth,
  ) {
    const common = { points, duration: options.windowSeconds };
    this.local = new RateLimiterMemory({ ...common, keyPrefix: name });
    const shared = options.shared;
    if (shared?.kind === 'redis') {
      this.shared = new RateLimiterRedis({
        ...common,
        storeClient: shared.client,
        keyPrefix: `keyhole:auth:${name}`,
        // Not connected: count locally at once rather than wait for ioredis.
        rejectIfRedisNotReady: true,
      });
    } else if (shared?.kind === 'postgres') {
      this.shared = new RateLimiterPostgres({
        ...common,
        storeClient: shared.pool,
        storeType: 'pool',
        tableName: AUTH_FAILURES_TABLE,
        tableCreated: true,
        keyPrefix: name,
      });
    }
  }

  async reserve(key: string): Promise<Reservation> {
    if (this.shared) {
      const shared = this.shared;
      try {
        await withDeadline(shared.consume(key), this.options.sharedTimeoutMs);
        this.health.succeeded();
        return { granted: true, release: () => this.release(shared, key) };
      } catch (error) {
        if (error instanceof RateLimiterRes) {
          this.health.succeeded();
          return refused(error);
        }
        this.health.failed(error);
      }
    }
    try {
      await this.local.consume(key);
    } catch (error) {
      if (error instanceof RateLimiterRes) {
        return refused(error);
      }
      throw error;
    }
    return { granted: true, release: () => this.release(this.local, key) };
  }

  private async release(limiter: RateLimiterAbstract, key: string): Promise<void> {
    try {
      await withDeadline(limiter.reward(key), this.options.sharedTimeoutMs);
    } catch (error) {
      // A point not given back only makes the limit a little stricter until the window ends.
      if (!(error instanceof RateLimiterRes)) {
        this.health.failed(error);
      }
    }
  }
}

function refused(result: RateLimiterRes): Reservation {
  return { granted: false, retryAfterSeconds: Math.max(1, Math.ceil(result.msBeforeNext / 1000)) };
}

/** `promise`, or a rejection after `timeoutMs` (the operation itself is left to finish). */
export function withDeadline<T>(promise: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
  });
  // A late rejection of the operation must not become an unhandled one.
  promise.catch(() => undefined);
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}
