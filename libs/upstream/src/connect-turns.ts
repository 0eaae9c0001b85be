import type { Duplex } from 'node:stream';
import { performance } from 'node:perf_hooks';
import { UpstreamError } from './upstream.errors';

/** Ends a connect's turn; idempotent. `silent`: the console let the settle time pass without a byte. */
export type ReleaseTurn = (silent?: boolean) => void;

/** How long a console that waits for its client is remembered as such (its connects do not take turns). */
const SILENT_MEMORY_MS = 10 * 60_000;
/** Consoles remembered as silent at most; the oldest is forgotten first. */
const MAX_SILENT_CONSOLES = 10_000;

/**
 * Connects to one console take turns: at most one connection per console (host:port) is between
 * the start of its TCP connect and its console's first bytes.
 *
 * QEMU listens for VNC clients with a listen backlog of 1. While one accepted connection waits for
 * QEMU's main loop to pick it up, a second connect fills the accept queue and the kernel drops the
 * third one's SYN; that client sends it again only a full second later (then 3 s, 7 s...). So 20
 * browsers opening the same console at once would wait seconds, most of them in SYN retries.
 * Taking turns, each waits only for the ones before it to be accepted: a VNC server greets a
 * client the moment it accepts it, so a turn ends with the greeting, or at once when the connect
 * fails or the connection closes.
 *
 * A console that waits for its client to speak first (SPICE, a serial port, an echo server) holds
 * its turn at most `settleMs` past the TCP connect; it is then remembered as silent for 10 minutes,
 * and its connects (the waiting ones included) stop taking turns, so that only the first burst
 * waits. Different consoles never wait for each other, and an uncontended connect does not wait.
 */
export class ConnectTurns {
  /** Consoles with a turn held, each with the connects waiting for it, first come first served. */
  private readonly waiting = new Map<string, Array<(release: ReleaseTurn | undefined) => void>>();
  /** Consoles that let a turn settle in silence, with when they are forgotten (performance.now() ms). */
  private readonly silent = new Map<string, number>();

  /** @param settleMs how long past its TCP connect a silent console holds its turn (ms). */
  constructor(private readonly settleMs: number) {}

  /** Consoles with a turn held now. */
  get busyConsoles(): number {
    return this.waiting.size;
  }

  /**
   * Waits for this connect's turn at the console `key`, at most `timeoutMs` (then rejects with a
   * connect timeout). Resolves with the turn's release, which the caller passes to
   * `holdUntilSpoken` once connected or calls when the connect failed; or with undefined when the
   * console is known to wait for its client (no turn to take).
   */
  take(key: string, timeoutMs: number): Promise<ReleaseTurn | undefined> {
    if (this.isSilent(key)) {
      return Promise.resolve(undefined);
    }
    const queue = this.waiting.get(key);
    if (queue === undefined) {
      this.waiting.set(key, []);
      return Promise.resolve(this.turn(key));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const index = queue.indexOf(grant);
        if (index !== -1) {
          queue.splice(index, 1);
        }
        reject(
          new UpstreamError('connect timeout', `no connection to the console within ${timeoutMs} ms (waiting for earlier connects to it)`),
        );
      }, timeoutMs);
      const grant = (release: ReleaseTurn | undefined): void => {
        clearTimeout(timer);
        resolve(release);
      };
      queue.push(grant);
    });
  }

  /**
   * Ends the turn when the connected console first sends bytes (observed through 'readable', not
   * consumed: they stay in the socket for whoever reads it), when the socket closes, or `settleMs`
   * from now, whichever comes first.
   */
  holdUntilSpoken(socket: Duplex, release: ReleaseTurn): void {
    const end = (silent: boolean): void => {
      clearTimeout(timer);
      // Once no 'readable' listener is left, a 'data' listener (the caller's) makes the socket flow again.
      socket.off('readable', spoke);
      socket.off('close', spoke);
      release(silent);
    };
    const spoke = (): void => end(false);
    const timer = setTimeout(end, this.settleMs, true);
    timer.unref();
    socket.on('readable', spoke);
    socket.on('close', spoke);
  }

  private turn(key: string): ReleaseTurn {
    let released = false;
    return (silent = false) => {
      if (released) {
        return;
      }
      released = true;
      const queue = this.waiting.get(key) ?? [];
      if (silent) {
        this.rememberSilent(key);
        this.waiting.delete(key);
        for (const grant of queue) {
          grant(undefined);
        }
        return;
      }
      const next = queue.shift();
      if (next) {
        next(this.turn(key));
      } else {
        this.waiting.delete(key);
      }
    };
  }

  private isSilent(key: string): boolean {
    const until = this.silent.get(key);
    if (until === undefined) {
      return false;
    }
    if (until > performance.now()) {
      return true;
    }
    this.silent.delete(key);
    return false;
  }

  private rememberSilent(key: string): void {
    this.silent.delete(key);
    if (this.silent.size >= MAX_SILENT_CONSOLES) {
      this.silent.delete(this.silent.keys().next().value as string);
    }
    this.silent.set(key, performance.now() + SILENT_MEMORY_MS);
  }
}
