import { inspect } from 'node:util';

/*
 * How the tests and the bench wait. For an event: `withDeadline`. For a state that can only be
 * looked at (a row, a log line, a port that listens, a flag): `waitUntil`. Every wait has a deadline
 * and says what it waited for when it gives up; nothing sleeps for a fixed time.
 */

const DEFAULT_TIMEOUT_MS = 5_000;

export interface WaitOptions {
  /** Pause between two probes, ms (default 25); 0 waits for the next turn of the event loop only. */
  intervalMs?: number;
  /**
   * A probe that throws is "not yet" and is tried again; the last error ends the message at the
   * deadline (default false: an error fails the wait at once).
   */
  retryErrors?: boolean;
  /** Gives up at the next probe once aborted (a racing failure has won). */
  signal?: AbortSignal;
}

/**
 * Calls `probe` until it returns a value other than undefined, and resolves with that value; rejects
 * after `timeoutMs` with `what` ("timed out after 5000 ms waiting for WHAT"). `what` may be a
 * function, called only then (to add a process's output, say).
 */
export async function waitUntil<T>(
  probe: () => Promise<T | undefined> | T | undefined,
  timeoutMs = DEFAULT_TIMEOUT_MS,
  what: string | (() => string) = 'a condition',
  { intervalMs = 25, retryErrors = false, signal }: WaitOptions = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  const describe = (): string => (typeof what === 'string' ? what : what());
  let lastError: unknown;
  for (;;) {
    if (signal?.aborted) {
      throw new Error(`cancelled while waiting for ${describe()}`);
    }
    try {
      const value = await probe();
      if (value !== undefined) {
        return value;
      }
    } catch (error) {
      if (!retryErrors) {
        throw error;
      }
      lastError = error;
    }
    if (Date.now() >= deadline) {
      const last = lastError === undefined ? '' : `; last attempt: ${lastError instanceof Error ? lastError.message : inspect(lastError)}`;
      throw new Error(`timed out after ${Math.max(0, Math.round(timeoutMs))} ms waiting for ${describe()}${last}`);
    }
    await new Promise((resolve) =>
      intervalMs > 0 ? setTimeout(resolve, Math.min(intervalMs, Math.max(1, deadline - Date.now()))) : setImmediate(resolve),
    );
  }
}

/** `promise`, or a rejection naming what was awaited once `timeoutMs` have passed. */
export function withDeadline<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
