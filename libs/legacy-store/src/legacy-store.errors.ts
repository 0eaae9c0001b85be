import { KeyholeError } from '@keyhole/core';

/**
 * Why the legacy store did not answer, short and free of keys and values:
 * `timeout` (no answer within timeoutMs), `disconnected` (no connection right now, commands are
 * not queued), `reply <CODE>` (Redis answered an error such as NOAUTH or LOADING), `error` (other).
 */
export type LegacyStoreFailure = 'timeout' | 'disconnected' | `reply ${string}` | 'error';

/**
 * The legacy Redis store is down, slow or answering errors. A legacy token cannot be checked, so the
 * caller refuses it (SERVICE_UNAVAILABLE); the client keeps reconnecting by itself.
 */
export class LegacyStoreUnavailable extends KeyholeError {
  constructor(readonly reason: LegacyStoreFailure) {
    super('SERVICE_UNAVAILABLE', `The legacy token store did not answer (${reason})`, {
      details: { reason },
      logLevel: 'warn',
    });
    this.name = 'LegacyStoreUnavailable';
  }
}
