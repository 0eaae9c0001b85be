import { Inject, Logger, Module, OnApplicationShutdown, Optional } from '@nestjs/common';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { CLOCK, Clock } from '@keyhole/core';
import { LegacyTokenStore } from './legacy-token-store';

/** `LegacyTokenStore | null`: null when no legacy store is configured (`KEYHOLE_LEGACY_REDIS_URL` unset). */
export const LEGACY_TOKEN_STORE = Symbol('keyhole.legacyTokenStore');

/**
 * Provides the legacy token store from `config.legacy` (one Redis connection per process) and closes
 * it on shutdown. Needs `ConfigModule`; uses `CLOCK` when `CoreModule` is loaded.
 */
@Module({
  providers: [
    {
      provide: LEGACY_TOKEN_STORE,
      inject: [KEYHOLE_CONFIG, { token: CLOCK, optional: true }],
      useFactory: (config: KeyholeConfig, clock: Clock | undefined): LegacyTokenStore | null => {
        const { redisUrl, format, keyPrefix, timeoutMs, osloCacheExpirationSeconds } = config.legacy;
        if (!redisUrl) {
          return null;
        }
        return new LegacyTokenStore(
          { redisUrl, format, keyPrefix, timeoutMs, osloCacheExpirationSeconds, clock },
          new Logger(LegacyTokenStore.name),
        );
      },
    },
  ],
  exports: [LEGACY_TOKEN_STORE],
})
export class LegacyStoreModule implements OnApplicationShutdown {
  constructor(@Optional() @Inject(LEGACY_TOKEN_STORE) private readonly store: LegacyTokenStore | null) {}

  async onApplicationShutdown(): Promise<void> {
    await this.store?.close();
  }
}
