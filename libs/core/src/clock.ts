/** Where "now" comes from. Injected so that expiry boundaries can be tested to the second. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  nowMs(): number;
}

export const CLOCK = Symbol('keyhole.clock');

export const systemClock: Clock = {
  nowMs: () => Date.now(),
};

/** Whole seconds since the Unix epoch, the unit of `console_auth_tokens.expires` (as Nova). */
export function nowSeconds(clock: Clock): number {
  return Math.floor(clock.nowMs() / 1000);
}

/** A clock that only moves when told to; for tests and benchmarks. */
export class ManualClock implements Clock {
  constructor(private currentMs: number) {}

  nowMs(): number {
    return this.currentMs;
  }

  set(epochMs: number): void {
    this.currentMs = epochMs;
  }

  advanceSeconds(seconds: number): void {
    this.currentMs += seconds * 1000;
  }
}
