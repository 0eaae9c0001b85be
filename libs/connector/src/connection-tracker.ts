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

  constructor(
    private readonly metrics: ConnectorMetrics,
    private readonly onChange: (counts: { live: number; total: number }) => void = () => undefined,
  ) {}

  get counts(): { live: number; total: number } {
    return { live: this.sockets.size, total: this.total };
  }

  /** Counts `socket` as live until it closes. */
  add(socket: Socket): void {
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
