import { Logger } from '@nestjs/common';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { WebSocketServer } from 'ws';
import type { CellDatabase } from '@keyhole/cells';
import type { KeyholeConfig } from '@keyhole/config';
import { type Clock, destroyAfterFinish } from '@keyhole/core';
import type { ConsoleEvent } from '@keyhole/db';
import { ConsoleEventsListener, EventsConnectionDeadlines } from './console-events.listener';
import { offersBinarySubprotocol } from './handshake-rules';
import { ProxyMetrics } from './proxy.metrics';
import { SessionLauncher } from './session-launcher';
import { SessionRecorder } from './session-recorder';
import { SessionRegistry } from './session-registry';
import { UpgradeGate, UpgradeGateOptions } from './upgrade-gate';
import { Refusal, refuseUpgrade } from './upgrade-refusals';
import type { VncSecurityOptions } from './vnc-security';

export interface ConsoleProxyOptions extends UpgradeGateOptions {
  cellDatabaseUrl: string;
  /** Deadlines of the revocation channel's own connection to the cell database. */
  databaseDeadlines: EventsConnectionDeadlines;
  settings: KeyholeConfig['proxy'];
  /** RFB security with VNC consoles' hypervisors; unset when only `none` is allowed (bytes pass untouched). */
  vncSecurity?: VncSecurityOptions;
  /** Told of each socket whose upgrade was granted (it no longer counts as unauthenticated). */
  granted?: (socket: Duplex) => void;
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
  private readonly launcher: SessionLauncher;
  private readonly granted: ((socket: Duplex) => void) | undefined;
  /** This proxy's name in session records, stable across restarts unless it names the process. */
  private readonly instance: string;

  constructor(
    options: ConsoleProxyOptions,
    private readonly cell: CellDatabase,
    private readonly metrics: ProxyMetrics,
    private readonly clock: Clock,
  ) {
    const settings = options.settings;
    this.granted = options.granted;
    this.instance = options.instance;
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
    // A handshake ws cannot complete (bad key, version, subprotocol list or method) would get ws's
    // own text/html 400 that repeats what was wrong: answer it as every refusal is answered.
    this.wss.on('wsClientError', (_error: Error, socket: Duplex) => this.refuse(socket, INVALID_HANDSHAKE));
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
    const recorder = new SessionRecorder(cell.sessions, { maxPending: settings.sessionWriteQueue, metrics: metrics.sessionWrites() });
    this.gate = new UpgradeGate(options, cell, recorder, metrics, clock);
    this.launcher = new SessionLauncher(
      settings.connectTimeoutMs,
      this.registry,
      recorder,
      this.gate,
      metrics,
      clock,
      () => this.draining,
      options.vncSecurity ?? null,
    );
    this.events = new ConsoleEventsListener(
      options.cellDatabaseUrl,
      `keyhole-proxy:${options.cellName}:events`,
      options.databaseDeadlines,
      {
        onEvent: (event) => this.onConsoleEvent(event),
        reconcile: () => this.reconcile(),
      },
      options.instance,
    );
  }

  async start(): Promise<void> {
    this.registry.start();
    this.gate.start();
    await this.events.start();
    await this.endEarlierSessions();
  }

  /**
   * A proxy killed before it could write its sessions' ends left their rows live: its next start
   * under the same name ends them (`proxy restarted`), before it serves. Only while it holds the
   * lock on its name, so that it never ends the rows of another running process; otherwise the
   * reaper ends them once they are stale.
   */
  private async endEarlierSessions(): Promise<void> {
    if (!this.events.holdsProxyName) {
      return;
    }
    let ended: number;
    try {
      ended = await this.cell.sessions.endEarlierOfProxy(this.instance);
    } catch (error) {
      this.logger.warn(
        { err: error, proxyInstance: this.instance },
        'could not end the sessions an earlier run left live; the reaper will',
      );
      return;
    }
    if (ended > 0) {
      this.logger.warn({ proxyInstance: this.instance, sessions: ended }, 'ended the sessions an earlier run of this proxy left live');
    }
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
    while (this.registry.size > 0 && this.clock.nowMs() < deadline) {
      await delay(Math.min(250, graceMs));
    }
    this.registry.closeAll('proxy shutdown');
    const closeDeadline = Date.now() + 5_000;
    while (this.registry.size > 0 && Date.now() < closeDeadline) {
      await delay(25);
    }
  }

  /** Closes what is left and waits for every session record to be written. */
  async stop(): Promise<void> {
    this.draining = true;
    this.registry.closeAll('proxy shutdown');
    this.registry.stop();
    this.gate.stop();
    await this.events.stop();
    await this.launcher.waitForWrites(Date.now() + 5_000);
  }

  /** The http server's 'upgrade' listener. Never throws; every path answers or closes the socket. */
  readonly handleUpgrade = (request: IncomingMessage, socket: Duplex, head: Buffer): void => {
    // Errors on a socket we are about to refuse are not the proxy's problem, but must be handled.
    socket.on('error', ignore);
    if (!socket.writable) {
      // Already answered before its head was read (a connection cap): nothing to check.
      socket.destroy();
      return;
    }
    this.upgrade(request, socket, head).catch((error: unknown) => {
      this.logger.error({ err: error }, 'websocket upgrade failed');
      this.refuse(socket, INTERNAL_ERROR);
    });
  };

  private async upgrade(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const startedAt = process.hrtime.bigint();
    if (this.draining) {
      return this.refuse(socket, DRAINING);
    }
    // Before the token check: a client that cannot read binary frames costs no database work.
    if (!offersBinarySubprotocol(request.headers['sec-websocket-protocol'])) {
      return this.refuse(socket, UNSUPPORTED_SUBPROTOCOL);
    }
    const grant = await this.gate.check(request);
    if (grant.kind !== 'grant') {
      return this.refuse(socket, grant);
    }

    const pending = this.launcher.connect(grant);
    // If ws never completes the upgrade (a bad Sec-WebSocket-Key, a client that left during the
    // checks), release the console and the session at once instead of holding a serial port.
    let settled = false;
    const abandon = (): void => {
      if (settled) {
        return;
      }
      settled = true;
      this.launcher.abandon(pending);
    };
    if (socket.destroyed) {
      return abandon();
    }
    socket.once('close', abandon);
    this.wss.handleUpgrade(request, socket, head, (ws) => {
      settled = true;
      socket.off('close', abandon);
      this.granted?.(socket);
      // ws ends the socket once the close handshake is done (or the browser half-closed), then,
      // on the browser's FIN, ends the socket and its frame parser again, which builds two error
      // objects that nobody reads (2-3 % of the connect path's CPU). Nothing more can come or go
      // after that: close the socket as soon as our last bytes are out (the server closes first,
      // RFC 6455 7.1.1).
      socket.once('finish', destroyAfterFinish);
      // The browser may write before the console is connected: hold its frames in the socket
      // (no 'message' listener yet, so ws would drop them) until the pump starts.
      ws.pause();
      this.launcher.start(ws, pending, startedAt).catch((error: unknown) => {
        this.logger.error({ err: error, sessionId: grant.id }, 'session setup failed');
        ws.terminate();
      });
    });
  }

  private onConsoleEvent(event: ConsoleEvent): void {
    if (event.kind === 'revoke') {
      this.launcher.cancelByTokenIds(new Set(event.tokenIds), 'token revoked');
      let closed = this.registry.closeByTokenIds(event.tokenIds, 'token revoked');
      if (event.instanceUuids?.length) {
        closed += this.registry.closeLegacyByInstances(event.instanceUuids, 'token revoked');
      }
      if (closed > 0) {
        this.logger.log({ tokens: event.tokenIds.length, sessions: closed }, 'ended sessions of revoked tokens');
      }
    } else if (event.kind === 'end-session') {
      this.launcher.cancelBySessionIds(event.sessionIds, 'ended by operator');
      this.registry.closeBySessionIds(event.sessionIds, 'ended by operator');
    } else {
      this.gate.readFallbackFlag().catch((error: unknown) => this.logger.warn({ err: error }, 'could not read the legacy fallback flag'));
    }
  }

  /** After (re)connecting to the events channel: end sessions whose token or row went meanwhile. */
  private async reconcile(): Promise<void> {
    await this.gate.readFallbackFlag();
    const missing = await this.cell.tokens.findMissing(this.registry.liveTokenIds());
    if (missing.length > 0) {
      this.registry.closeByTokenIds(missing, 'token revoked');
    }
    const ended = await this.cell.sessions.findEnded(this.registry.all().map((session) => session.id));
    if (ended.length > 0) {
      this.registry.closeBySessionIds(ended, 'ended by operator');
    }
  }

  private refuse(socket: Duplex, refusal: Refusal): void {
    this.metrics.connects.inc({ result: refuseUpgrade(socket, refusal) });
  }
}

const DRAINING: Refusal = { kind: 'draining' };
const INTERNAL_ERROR: Refusal = { kind: 'internal_error' };
const INVALID_HANDSHAKE: Refusal = { kind: 'invalid_handshake' };
const UNSUPPORTED_SUBPROTOCOL: Refusal = { kind: 'unsupported_subprotocol' };

function ignore(): void {}
