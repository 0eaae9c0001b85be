import type { Socket } from 'node:net';
import { UpstreamError } from './upstream.errors';

/** Releases a connect's turn; idempotent. */
export type ReleaseTurn = () => void;

/**
 * Connects to one console take turns: at most one connection per console (host:port) is between
 * the start of its TCP connect and its console's first bytes.
 *
 * QEMU listens for VNC, SPICE and serial clients with a listen backlog of 1. While one accepted
 * connection waits for QEMU's main loop to pick it up, a second connect fills the accept queue and
 * the kernel drops the third one's SYN; that client sends it again only a full second later (then
 * 3 s, 7 s...). So 20 browsers opening the same console at once would wait seconds, most of them in
 * SYN retries. Taking turns, each waits only for the ones before it to be accepted: QEMU's VNC
 * server greets a client the moment it accepts it, so a turn ends with the greeting. A console that
 * waits for its client to speak first (SPICE, a serial port) holds its turn at most `settleMs` past
 * the TCP connect; a failed or closed connection ends its turn at once. Different consoles never
 * wait for each other, and an uncontended connect does not wait at all.
 */
export class ConnectTurns {
  /** Consoles with a turn held, each with the connects waiting for it, first come first served. */
  private readonly waiting = new Map<string, Array<(release: ReleaseTurn) => void>>();

  /** @param settleMs how long past its TCP connect a silent console holds its turn (ms). */
  constructor(private readonly settleMs: number) {}

  /** Consoles with a turn held now (for tests and metrics). */
  get busyConsoles(): number {
    return this.waiting.size;
  }

  /**
   * Waits for this connect's turn at the console `key`, at most `timeoutMs` (then rejects with a
   * connect timeout). The caller must pass the release to `holdUntilSpoken` once connected, or call
   * it when the connect failed.
   */
  take(key: string, timeoutMs: number): Promise<ReleaseTurn> {
    const queue = this.waiting.get(key);
    if (queue === undefined) {
      this.waiting.set(key, []);
      return Promise.resolve(this.turn(key));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const index = queue.indexOf(grant);
        if (index !== -1) queue.splice(index, 1);
        reject(new UpstreamError('connect timeout', `no connection to the console within ${timeoutMs} ms (waiting for earlier connects to it)`));
      }, timeoutMs);
      const grant = (release: ReleaseTurn): void => {
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
  holdUntilSpoken(socket: Socket, release: ReleaseTurn): void {
    const end = (): void => {
      clearTimeout(timer);
      // Once no 'readable' listener is left, a 'data' listener (the caller's) makes the socket flow again.
      socket.off('readable', end);
      socket.off('close', end);
      release();
    };
    const timer = setTimeout(end, this.settleMs);
    timer.unref();
    socket.on('readable', end);
    socket.on('close', end);
  }

  private turn(key: string): ReleaseTurn {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const queue = this.waiting.get(key);
      const next = queue?.shift();
      if (next) next(this.turn(key));
      else this.waiting.delete(key);
    };
  }
}
