import { Logger } from '@nestjs/common';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer } from 'ws';
import type { CellDatabase } from '@keyhole/cells';
import type { KeyholeConfig } from '@keyhole/config';
import type { Clock } from '@keyhole/core';
import type { ConsoleEvent } from '@keyhole/db';
import { ConnectTurns, connectUpstream, UpstreamError } from '@keyhole/upstream';
import { BridgeStats, CLOSE_CODES, CloseReason, ConsoleBridge } from './console-bridge';
import { ConsoleEventsListener } from './console-events.listener';
import type { LiveSession } from './live-session';
import { ProxyMetrics } from './proxy.metrics';
import { SessionRecorder } from './session-recorder';
import { SessionRegistry } from './session-registry';
import { UpgradeGate, UpgradeGateOptions } from './upgrade-gate';
import { destroyAfterFinish, Refusal, refuseUpgrade } from './upgrade-refusals';

/** Backpressure thresholds of each session's console-to-browser direction. */
const HIGH_WATER_MARK_BYTES = 256 * 1024;
const LOW_WATER_MARK_BYTES = 64 * 1024;

/**
 * How long past its TCP connect a console that has not spoken yet keeps the next connect to it
 * waiting (see ConnectTurns: QEMU's VNC server speaks at once, SPICE and serial consoles wait for
 * the client).
 */
const CONSOLE_SETTLE_MS = 50;

export interface ConsoleProxyOptions extends UpgradeGateOptions {
  cellDatabaseUrl: string;
  settings: KeyholeConfig['proxy'];
}

/**
 * The console proxy of one cell. It authenticates each websocket upgrade before accepting it
 * (token 401, console type 404, origin 403, busy exclusive console 409, database unreachable 503:
 * fail closed), then pipes the browser to the console. Live sessions end on revocation (on every
 * replica, through the cell's NOTIFY channel), on operator request, on limits, and on drain.
 */
export class ConsoleProxy {
  private readonly logger = new Logger(ConsoleProxy.name);
  private readonly wss: WebSocketServer;
  readonly registry: SessionRegistry;
  private readonly events: ConsoleEventsListener;
  private draining = false;
  private readonly gate: UpgradeGate;
  /** Session-end writes not yet done; stop() waits for them before the pool closes. */
  private readonly pendingWrites = new Set<Promise<unknown>>();
  /**
   * Sessions past their checks whose console is still connecting. Revocations and operator ends
   * that arrive meanwhile mark them here, and the session is closed as soon as it would start.
   */
  private readonly connecting = new Map<string, { tokenId: number | null; cancelled?: CloseReason }>();
  private readonly recorder: SessionRecorder;
  /** Connects to one console take turns, so that QEMU's listen backlog of 1 never drops one. */
  private readonly connectTurns = new ConnectTurns(CONSOLE_SETTLE_MS);

  constructor(
    private readonly options: ConsoleProxyOptions,
    private readonly cell: CellDatabase,
    private readonly metrics: ProxyMetrics,
    private readonly clock: Clock,
  ) {
    const settings = options.settings;
    this.wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      perMessageDeflate: false,
      maxPayload: settings.maxFrameBytes,
      // Console bytes are binary; text frames are passed on as bytes too, unchecked.
      skipUTF8Validation: true,
      // noVNC and websockify clients offer `binary`; answer it when offered, accept none too.
      handleProtocols: (protocols) => (protocols.has('binary') ? 'binary' : false),
    });
    this.registry = new SessionRegistry(
      {
        heartbeatIntervalMs: settings.heartbeatIntervalMs,
        idleTimeoutMs: settings.idleTimeoutMs,
        maxSessionMs: settings.maxSessionMs,
        enforceTokenExpiry: settings.enforceTokenExpiry,
        sessionHeartbeatMs: settings.sessionHeartbeatMs,
      },
      cell.sessions,
      () => clock.nowMs(),
    );
    this.recorder = new SessionRecorder(cell.sessions);
    this.gate = new UpgradeGate(options, cell, this.recorder, metrics, clock);
    this.events = new ConsoleEventsListener(options.cellDatabaseUrl, `keyhole-proxy:${options.cellName}:events`, {
      onEvent: (event) => this.onConsoleEvent(event),
      reconcile: () => this.reconcile(),
    });
  }

  async start(): Promise<void> {
    this.registry.start();
    this.gate.start();
    await this.events.start();
  }

  /** Whether a token missing from the cell database is looked up in the legacy store now. */
  get fallbackEnabled(): boolean {
    return this.gate.fallbackEnabled;
  }

  /** Whether this replica can serve: listening for revocations and not draining. */
  get ready(): boolean {
    return this.events.listening && !this.draining;
  }

  get liveSessions(): number {
    return this.registry.size;
  }

  /**
   * Stops accepting (new upgrades get 503), lets live sessions run for `graceMs`, then closes
   * the rest with 1001. Resolves when every session has ended.
   */
  async drain(graceMs: number): Promise<void> {
    this.draining = true;
    const deadline = this.clock.nowMs() + graceMs;
    while (this.registry.size > 0 && this.clock.nowMs() < deadline) await delay(Math.min(250, graceMs));
    this.registry.closeAll('proxy shutdown');
    const closeDeadline = Date.now() + 5_000;
    while (this.registry.size > 0 && Date.now() < closeDeadline) await delay(25);
  }

  /** Closes what is left and waits for every session record to be written. */
  async stop(): Promise<void> {
    this.draining = true;
    this.registry.closeAll('proxy shutdown');
    this.registry.stop();
    this.gate.stop();
    await this.events.stop();
    const deadline = Date.now() + 5_000;
    while ((this.registry.size > 0 || this.pendingWrites.size > 0) && Date.now() < deadline) {
      await Promise.race([Promise.allSettled([...this.pendingWrites]), delay(25)]);
    }
    // Rows of sessions that never got as far as an end are still queued: write them too.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.recorder.flush(), new Promise((resolve) => (timer = setTimeout(resolve, Math.max(0, deadline - Date.now()))))]);
    clearTimeout(timer);
  }

  /** The http server's 'upgrade' listener. Never throws; every path answers or closes the socket. */
  readonly handleUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer): void => {
    // Errors on a socket we are about to refuse are not the proxy's problem, but must be handled.
    socket.on('error', ignore);
    this.upgrade(request, socket, head).catch((error: unknown) => {
      this.logger.error({ err: error }, 'websocket upgrade failed');
      this.refuse(socket, INTERNAL_ERROR);
    });
  };

  private async upgrade(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const startedAt = process.hrtime.bigint();
    if (this.draining) return this.refuse(socket, DRAINING);
    const grant = await this.gate.check(request);
    if (grant.kind !== 'grant') return this.refuse(socket, grant);

    const upstream = connectUpstream(
      { host: grant.host, port: grant.port, internalAccessPath: grant.internalAccessPath },
      this.options.settings.connectTimeoutMs,
      this.connectTurns,
    );
    // Without a rejection handler until the websocket is open, a fast failure would be unhandled.
    upstream.catch(ignore);
    this.connecting.set(grant.id, { tokenId: grant.tokenId });
    // If ws never completes the upgrade (a bad Sec-WebSocket-Key, a client that left during the
    // checks), release the console and the session at once instead of holding a serial port.
    let settled = false;
    const abandon = (): void => {
      if (settled) return;
      settled = true;
      this.connecting.delete(grant.id);
      upstream.then((connection) => connection.destroy(), ignore);
      this.recordEnd(grant, 'client closed', this.noTraffic());
    };
    if (socket.destroyed) return abandon();
    socket.once('close', abandon);
    this.wss.handleUpgrade(request, socket, head, (ws) => {
      settled = true;
      socket.off('close', abandon);
      // ws ends the socket once the close handshake is done (or the browser half-closed), then,
      // on the browser's FIN, ends the socket and its frame parser again, which builds two error
      // objects that nobody reads (2-3 % of the connect path's CPU). Nothing more can come or go
      // after that: close the socket as soon as our last bytes are out (the server closes first,
      // RFC 6455 7.1.1).
      socket.once('finish', destroyAfterFinish);
      // The browser may write before the console is connected: hold its frames in the socket
      // (no 'message' listener yet, so ws would drop them) until the pump starts.
      ws.pause();
      this.attach(ws, upstream, grant, startedAt).catch((error: unknown) => {
        this.logger.error({ err: error, sessionId: grant.id }, 'session setup failed');
        ws.terminate();
      });
    });
  }

  private async attach(
    ws: WebSocket,
    upstreamPromise: ReturnType<typeof connectUpstream>,
    session: Omit<LiveSession, 'bridge'>,
    startedAt: bigint,
  ): Promise<void> {
    let upstream;
    try {
      upstream = await upstreamPromise;
    } catch (error) {
      this.connecting.delete(session.id);
      const reason = error instanceof UpstreamError ? error.reason : 'connect failed';
      this.metrics.connects.inc({ result: 'upstream_failed' });
      this.logger.warn({ sessionId: session.id, fingerprint: session.tokenFingerprint, instance: session.instanceUuid, reason }, 'console unreachable');
      // Paused since the upgrade: read again, or the browser's close reply is never seen.
      ws.resume();
      ws.close(CLOSE_CODES['console unreachable'], `console unreachable: ${reason}`);
      this.recordEnd(session, 'console unreachable', this.noTraffic());
      return;
    }
    const cancelled = this.connecting.get(session.id)?.cancelled;
    this.connecting.delete(session.id);
    if (ws.readyState !== WebSocket.OPEN || this.draining || cancelled) {
      upstream.destroy();
      const reason: CloseReason = cancelled ?? (this.draining ? 'proxy shutdown' : 'client closed');
      ws.resume();
      if (ws.readyState === WebSocket.OPEN) ws.close(CLOSE_CODES[reason], reason);
      this.recordEnd(session, reason, this.noTraffic());
      return;
    }
    const live: LiveSession = {
      ...session,
      bridge: new ConsoleBridge(ws, upstream, {
        highWaterMarkBytes: HIGH_WATER_MARK_BYTES,
        lowWaterMarkBytes: LOW_WATER_MARK_BYTES,
        nowMs: () => this.clock.nowMs(),
        onEnd: (reason, stats) => {
          this.registry.remove(live);
          this.metrics.sessionsLive.dec();
          this.metrics.bytes.inc({ direction: 'to_client' }, stats.bytesToClient);
          this.metrics.bytes.inc({ direction: 'to_console' }, stats.bytesToUpstream);
          this.recordEnd(live, reason, stats);
        },
      }),
    };
    this.registry.add(live);
    this.metrics.sessionsLive.inc();
    this.metrics.connects.inc({ result: 'accepted' });
    this.metrics.connectSeconds.observe(Number(process.hrtime.bigint() - startedAt) / 1e9);
    live.bridge.start();
  }

  private recordEnd(session: Omit<LiveSession, 'bridge'>, reason: CloseReason, stats: BridgeStats): void {
    this.metrics.sessionsEnded.inc({ reason: reason.replace(/ /g, '_') });
    this.logger.log(
      {
        sessionId: session.id,
        fingerprint: session.tokenFingerprint,
        instance: session.instanceUuid,
        consoleType: session.consoleType,
        bytesToClient: stats.bytesToClient,
        bytesToConsole: stats.bytesToUpstream,
        durationMs: stats.endedAtMs - stats.startedAtMs,
        reason,
      },
      'console session ended',
    );
    // The recorder writes the end after the row (or with it, when the row is not written yet).
    const write = this.recorder
      .end({ id: session.id, reason, bytesToClient: stats.bytesToClient, bytesToUpstream: stats.bytesToUpstream })
      .finally(() => this.pendingWrites.delete(write));
    this.pendingWrites.add(write);
    this.gate.releaseWhenWritten(session, write);
  }

  private onConsoleEvent(event: ConsoleEvent): void {
    if (event.kind === 'revoke') {
      const revoked = new Set(event.tokenIds);
      for (const entry of this.connecting.values()) if (entry.tokenId !== null && revoked.has(entry.tokenId)) entry.cancelled = 'token revoked';
      let closed = this.registry.closeByTokenIds(event.tokenIds, 'token revoked');
      if (event.instanceUuids?.length) closed += this.registry.closeLegacyByInstances(event.instanceUuids, 'token revoked');
      if (closed > 0) this.logger.log({ tokens: event.tokenIds.length, sessions: closed }, 'ended sessions of revoked tokens');
    } else if (event.kind === 'end-session') {
      for (const id of event.sessionIds) {
        const entry = this.connecting.get(id);
        if (entry) entry.cancelled = 'ended by operator';
      }
      this.registry.closeBySessionIds(event.sessionIds, 'ended by operator');
    } else {
      this.gate.readFallbackFlag().catch((error: unknown) => this.logger.warn({ err: error }, 'could not read the legacy fallback flag'));
    }
  }

  /** After (re)connecting to the events channel: end sessions whose token or row went meanwhile. */
  private async reconcile(): Promise<void> {
    await this.gate.readFallbackFlag();
    const missing = await this.cell.tokens.findMissing(this.registry.liveTokenIds());
    if (missing.length > 0) this.registry.closeByTokenIds(missing, 'token revoked');
    const ended = await this.cell.sessions.findEnded(this.registry.all().map((session) => session.id));
    if (ended.length > 0) this.registry.closeBySessionIds(ended, 'ended by operator');
  }

  private noTraffic(): BridgeStats {
    const nowMs = this.clock.nowMs();
    return { bytesToClient: 0, bytesToUpstream: 0, startedAtMs: nowMs, endedAtMs: nowMs };
  }

  private refuse(socket: Duplex, refusal: Refusal): void {
    this.metrics.connects.inc({ result: refuseUpgrade(socket, refusal) });
  }
}

const DRAINING: Refusal = { kind: 'draining' };
const INTERNAL_ERROR: Refusal = { kind: 'internal_error' };

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function ignore(): void {}
