import type { Socket } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import type { ConnectorMetrics } from './connector.metrics';

/**
 * The connections a connector carries now: counts for the metrics and the status file, and the
 * sockets that shutdown must wait for (and destroy once the grace period is over).
 */
export class ConnectionTracker {
  private readonly sockets = new Set<Socket>();
  private total = 0;
  private idle: (() => void) | undefined;

  /** When the last over-limit connection was logged (one line a second at most: a flood must not flood the log). */
  private lastOverLimitLogMs = 0;

  constructor(
    private readonly metrics: ConnectorMetrics,
    private readonly onChange: (counts: { live: number; total: number }) => void = () => undefined,
    /** Connections carried at once; more are closed at once (default 4096). */
    private readonly maxConnections = 4096,
  ) {}

  get counts(): { live: number; total: number } {
    return { live: this.sockets.size, total: this.total };
  }

  /**
   * Counts `socket` as live until it closes, or, when `maxConnections` are live already, destroys it,
   * counts it as `over_limit` and returns false (`log` is called at most once a second then).
   */
  admit(socket: Socket, log: (live: number) => void): boolean {
    if (this.sockets.size >= this.maxConnections) {
      socket.destroy();
      this.metrics.connections.inc({ result: 'over_limit' });
      const now = Date.now();
      if (now - this.lastOverLimitLogMs >= 1_000) {
        this.lastOverLimitLogMs = now;
        log(this.sockets.size);
      }
      return false;
    }
    this.add(socket);
    return true;
  }

  /** Counts `socket` as live until it closes. */
  private add(socket: Socket): void {
    this.sockets.add(socket);
    this.total += 1;
    this.metrics.live.inc();
    this.onChange(this.counts);
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.metrics.live.dec();
      this.onChange(this.counts);
      if (this.sockets.size === 0) {
        this.idle?.();
      }
    });
  }

  /** Waits until no connection is live, at most `graceMs`; then destroys what is left. Resolves with how many were cut. */
  async drain(graceMs: number): Promise<number> {
    if (this.sockets.size > 0) {
      const controller = new AbortController();
      const idle = new Promise<void>((resolve) => (this.idle = resolve));
      await Promise.race([idle, delay(graceMs, undefined, { signal: controller.signal }).catch(() => undefined)]);
      controller.abort();
    }
    const cut = this.sockets.size;
    for (const socket of this.sockets) {
      socket.destroy();
    }
    return cut;
  }
}

/**
 * Refuses a connection: writes `answer` (a status byte, or nothing), half-closes, and throws away
 * what the peer still sends until it closes, for at most a second. Closing at once with unread
 * bytes would reset the connection, and the peer could lose the answer.
 */
export function refuseConnection(socket: Socket, answer?: Buffer): void {
  const timer = setTimeout(() => socket.destroy(), 1_000);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  socket.on('error', () => socket.destroy());
  socket.resume();
  if (answer) {
    socket.end(answer);
  } else {
    socket.end();
  }
}
