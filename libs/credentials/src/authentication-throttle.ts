import { Inject, Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import { Redis, RedisOptions } from 'ioredis';
import { Counter, Gauge, Registry } from 'prom-client';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { ControlDatabase } from '@keyhole/db';
import { Argon2Gate } from './argon2-gate';
import { authenticationBusy, tooManyFailures } from './credentials.errors';
import { FailureLimiter, SharedFailureStore, ThrottleGrant, ThrottleReason, ThrottleRefusal, withDeadline } from './failure-limiter';

/** Why an authentication was refused; the only label values of `keyhole_api_auth_refusals_total`. */
export type RefusalReason = 'malformed' | 'bad_key' | ThrottleReason | 'argon2_busy';

const RECONNECT_CAP_MS = 5_000;

/**
 * What keeps guessing API keys cheap for keyhole and useless for the guesser: the failure limits
 * (per key id, per client address) and the cap on argon2 work, with their metrics. Labels are
 * fixed small sets: never a key, key id or address.
 */
@Injectable()
export class AuthenticationThrottle implements OnApplicationShutdown {
  private readonly logger = new Logger(AuthenticationThrottle.name);
  private readonly limiter: FailureLimiter;
  private readonly gate: Argon2Gate;
  private readonly redis: Redis | undefined;
  private redisConnected: Promise<void> | undefined;
  private readonly storeTimeoutMs: number;
  private readonly refusals: Counter<'reason'>;
  private readonly fallbacks: Counter;
  private readonly verifications: Counter;

  constructor(@Inject(KEYHOLE_CONFIG) config: KeyholeConfig, control: ControlDatabase, registry: Registry) {
    const settings = config.credentials.throttle;
    this.storeTimeoutMs = settings.storeTimeoutMs;
    let shared: SharedFailureStore | undefined;
    if (settings.store === 'redis') {
      this.redis = redisClient(settings.redisUrl as string, settings.storeTimeoutMs);
      // ioredis reports every failed reconnect here; the limiter logs the outage once.
      this.redis.on('error', () => undefined);
      shared = { kind: 'redis', client: this.redis };
    } else if (settings.store === 'postgres') {
      shared = { kind: 'postgres', pool: control.pool };
    }
    this.limiter = new FailureLimiter({
      failuresPerKey: settings.failuresPerKey,
      failuresPerAddress: settings.failuresPerAddress,
      windowSeconds: settings.windowSeconds,
      shared,
      sharedTimeoutMs: settings.storeTimeoutMs,
      onSharedStoreFailure: (error, first) => {
        this.fallbacks.inc();
        if (first) {
          this.logger.warn(
            { store: settings.store, reason: error instanceof Error ? error.message.slice(0, 200) : 'unknown' },
            'authentication failure store unreachable: counting failures in this process until it answers',
          );
        }
      },
      onSharedStoreRecovered: () => this.logger.log({ store: settings.store }, 'authentication failure store answers again'),
    });
    const gate = new Argon2Gate(config.credentials.argon2.concurrency, config.credentials.argon2.queueLimit);
    this.gate = gate;

    this.refusals = new Counter({
      name: 'keyhole_api_auth_refusals_total',
      help: 'Refused authentications by reason (malformed, bad_key, rate_limited_key, rate_limited_address, argon2_busy)',
      labelNames: ['reason'],
      registers: [registry],
    });
    this.fallbacks = new Counter({
      name: 'keyhole_api_auth_limiter_fallbacks_total',
      help: 'Failed-authentication counts kept in process memory because the shared store (Redis, PostgreSQL) failed or was too slow',
      registers: [registry],
    });
    this.verifications = new Counter({
      name: 'keyhole_api_argon2_verifications_total',
      help: 'argon2 verifications run (API keys not in the cache, unknown and revoked ids included)',
      registers: [registry],
    });
    new Gauge({
      name: 'keyhole_api_argon2_in_flight',
      help: 'argon2 verifications running now',
      registers: [registry],
      collect() {
        this.set(gate.inFlight);
      },
    });
    new Gauge({
      name: 'keyhole_api_argon2_queued',
      help: 'argon2 verifications waiting for a free slot',
      registers: [registry],
      collect() {
        this.set(gate.queued);
      },
    });
  }

  /**
   * Reserves a failure of `keyId` and of the client address before argon2 runs; throws
   * TOO_MANY_REQUESTS (with Retry-After) when either count is spent.
   */
  async reserve(keyId: string, addressKey: string): Promise<ThrottleGrant> {
    await this.connectRedis();
    const result = await this.limiter.reserve(keyId, addressKey);
    if (isRefusal(result)) {
      this.refused(result.reason);
      throw tooManyFailures(result.retryAfterSeconds);
    }
    return result;
  }

  /**
   * Runs one argon2 verification within the concurrency cap, queued fairly by client address;
   * throws AUTHENTICATION_BUSY (Retry-After: 1) at once when the queue is full.
   */
  verify(addressKey: string, verification: () => Promise<boolean>): Promise<boolean> {
    const running = this.gate.tryRun(addressKey, () => {
      this.verifications.inc();
      return verification();
    });
    if (running === null) {
      this.refused('argon2_busy');
      throw authenticationBusy();
    }
    return running;
  }

  /**
   * Connects to Redis at the first authentication rather than at start: CLI commands build this
   * service too and never authenticate. Waits at most the store's timeout; a Redis that is not there
   * yet is the limiter's fallback case, and ioredis keeps reconnecting by itself.
   */
  private connectRedis(): Promise<void> {
    if (!this.redis) {
      return Promise.resolve();
    }
    const redis = this.redis;
    this.redisConnected ??= withDeadline(redis.connect(), this.storeTimeoutMs).catch(() => undefined);
    return this.redisConnected;
  }

  refused(reason: RefusalReason): void {
    this.refusals.inc({ reason });
  }

  onApplicationShutdown(): void {
    this.redis?.disconnect();
  }
}

function isRefusal(result: ThrottleGrant | ThrottleRefusal): result is ThrottleRefusal {
  return 'reason' in result;
}

/** A client that connects when first asked to, fails fast while disconnected, and reconnects by itself. */
function redisClient(url: string, timeoutMs: number): Redis {
  const options: RedisOptions = {
    lazyConnect: true,
    // Not connected: the limiter counts in memory at once instead of queueing the command.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: timeoutMs,
    connectTimeout: Math.max(timeoutMs, 2_000),
    retryStrategy: (attempt) => Math.min(100 * 2 ** Math.min(attempt, 10), RECONNECT_CAP_MS),
    connectionName: 'keyhole-auth-limiter',
    disconnectTimeout: 200,
  };
  if (/^rediss:/i.test(url)) {
    options.tls = {};
  }
  return new Redis(url, options);
}
