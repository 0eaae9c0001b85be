import type { Duplex } from 'node:stream';
import type { RawData, WebSocket } from 'ws';

/** Why a session ended; stored in console_sessions.close_reason and logged. */
export type CloseReason =
  | 'client closed'
  | 'client error'
  | 'frame too large'
  | 'console closed'
  | 'console error'
  | 'console unreachable'
  | 'console security failed'
  | 'client security refused'
  | 'heartbeat timeout'
  | 'idle timeout'
  | 'session time limit'
  | 'token expired'
  | 'token revoked'
  | 'ended by operator'
  | 'proxy lost'
  | 'proxy shutdown';

/** Close code sent to the browser for a reason the proxy (not the browser) decided. */
export const CLOSE_CODES: Record<CloseReason, number> = {
  'client closed': 1000,
  'client error': 1002,
  'frame too large': 1009,
  'console closed': 1000,
  'console error': 1011,
  'console unreachable': 1011,
  // RFB security with the hypervisor failed (README's VNC security to the hypervisor).
  'console security failed': 1011,
  // The browser did not follow the RFB exchange the proxy offers (RFB 3.8, security type None).
  'client security refused': 1008,
  'heartbeat timeout': 1001,
  'idle timeout': 1008,
  'session time limit': 1008,
  'token expired': 1008,
  'token revoked': 1008,
  'ended by operator': 1008,
  // The cell database ended it (this proxy could not report for longer than the stale time).
  'proxy lost': 1011,
  'proxy shutdown': 1001,
};

export interface BridgeStats {
  bytesToClient: number;
  bytesToUpstream: number;
  startedAtMs: number;
  endedAtMs: number;
}

export interface ConsoleBridgeOptions {
  /** Bytes queued towards the browser above which the console is no longer read. */
  highWaterMarkBytes: number;
  /** Reading resumes once the queue is back under this. */
  lowWaterMarkBytes: number;
  /** Milliseconds since the epoch; injected for tests. */
  nowMs: () => number;
  /** Called exactly once, when both sides are closed. */
  onEnd: (reason: CloseReason, stats: BridgeStats) => void;
}

/** After the browser leaves, how long the console gets to take the last bytes and close. */
const UPSTREAM_LINGER_MS = 2_000;

/**
 * Pipes one browser websocket and one console TCP stream, binary both ways, with backpressure:
 * a console that writes faster than the browser reads stops being read (bounded memory per
 * session), and a browser that writes faster than the console reads stops being read too.
 * Everything the console sent before it closed reaches the browser before the close frame.
 * Both sides are closed exactly once, and `onEnd` reports why and how many bytes went each way.
 */
export class ConsoleBridge {
  private reason: CloseReason | undefined;
  private ended = false;
  private queuedToClient = 0;
  private upstreamPaused = false;
  private lingerTimer: NodeJS.Timeout | undefined;
  bytesToClient = 0;
  bytesToUpstream = 0;
  readonly startedAtMs: number;
  lastActivityAtMs: number;
  /** Cleared by each ping, set by each pong; a peer that answers no ping is dropped. */
  alive = true;

  constructor(
    private readonly ws: WebSocket,
    private readonly upstream: Duplex,
    private readonly options: ConsoleBridgeOptions,
  ) {
    this.startedAtMs = options.nowMs();
    this.lastActivityAtMs = this.startedAtMs;
  }

  /** Starts both directions; call once, after the websocket is open and the console connected. */
  start(): void {
    this.ws.on('message', this.onClientMessage);
    this.ws.on('pong', this.onPong);
    this.ws.on('close', this.onClientClose);
    this.ws.on('error', this.onClientError);
    this.upstream.on('data', this.onUpstreamData);
    this.upstream.on('drain', this.onUpstreamDrain);
    this.upstream.on('end', this.onUpstreamEnd);
    this.upstream.on('error', this.onUpstreamError);
    this.upstream.on('close', this.onUpstreamClose);
    // Both sides were paused until now: the browser's frames since the upgrade, and a console
    // connected through CONNECT after its response head.
    this.ws.resume();
    this.upstream.resume();
  }

  /** Ends the session for a reason decided by the proxy (revocation, limits, shutdown). */
  close(reason: CloseReason): void {
    if (this.reason !== undefined) {
      return;
    }
    this.reason = reason;
    if (reason === 'heartbeat timeout') {
      this.ws.terminate();
    } else {
      this.ws.close(CLOSE_CODES[reason], reason);
      // A browser held back by backpressure must be read again, or its close reply is never seen
      // and the close waits for ws's 30 s timeout, with the session's end unrecorded till then.
      this.ws.resume();
    }
    this.upstream.destroy();
  }

  /** Sends a ping, after noting whether the previous one was answered. Returns false if it was not. */
  ping(): boolean {
    if (!this.alive) {
      return false;
    }
    this.alive = false;
    this.ws.ping();
    return true;
  }

  get closeReason(): CloseReason | undefined {
    return this.reason;
  }

  private readonly onClientMessage = (data: RawData): void => {
    if (this.reason !== undefined) {
      // Closing: the console is gone. A write to it would fail and pause the browser's side, whose
      // close reply would then never be read (a busy browser sends until it sees the close).
      return;
    }
    // binaryType is 'nodebuffer', so a message is one Buffer (fragments already joined by ws).
    const bytes = data as Buffer;
    this.bytesToUpstream += bytes.length;
    this.lastActivityAtMs = this.options.nowMs();
    if (!this.upstream.write(bytes)) {
      this.ws.pause();
    }
  };

  private readonly onUpstreamDrain = (): void => {
    this.ws.resume();
  };

  private readonly onUpstreamData = (chunk: Buffer): void => {
    const length = chunk.length;
    this.bytesToClient += length;
    this.lastActivityAtMs = this.options.nowMs();
    this.queuedToClient += length;
    this.ws.send(chunk, { binary: true }, () => this.onSentToClient(length));
    if (!this.upstreamPaused && this.queuedToClient >= this.options.highWaterMarkBytes) {
      this.upstreamPaused = true;
      this.upstream.pause();
    }
  };

  private onSentToClient(length: number): void {
    this.queuedToClient -= length;
    if (this.upstreamPaused && this.queuedToClient <= this.options.lowWaterMarkBytes && this.reason === undefined) {
      this.upstreamPaused = false;
      this.upstream.resume();
    }
  }

  private readonly onUpstreamEnd = (): void => {
    // Every byte received was handed to ws.send already; ws sends the close frame after them.
    this.close('console closed');
  };

  private readonly onUpstreamError = (): void => {
    this.close('console error');
  };

  private readonly onUpstreamClose = (): void => {
    if (this.reason === undefined) {
      this.close('console closed');
    }
  };

  private readonly onPong = (): void => {
    this.alive = true;
  };

  private readonly onClientError = (error: Error & { code?: string }): void => {
    if (this.reason !== undefined) {
      return;
    }
    this.reason = error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' ? 'frame too large' : 'client error';
    this.upstream.destroy();
  };

  private readonly onClientClose = (): void => {
    if (this.reason === undefined) {
      this.reason = 'client closed';
      // Let the console take what the browser already sent, then close; never wait long.
      this.upstream.end();
      this.lingerTimer = setTimeout(() => this.upstream.destroy(), UPSTREAM_LINGER_MS);
      this.lingerTimer.unref();
    } else {
      this.upstream.destroy();
    }
    this.finish();
  };

  private finish(): void {
    if (this.ended) {
      return;
    }
    this.ended = true;
    this.options.onEnd(this.reason ?? 'client closed', {
      bytesToClient: this.bytesToClient,
      bytesToUpstream: this.bytesToUpstream,
      startedAtMs: this.startedAtMs,
      endedAtMs: this.options.nowMs(),
    });
  }
}
