import { Logger } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { IncomingMessage, STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer } from 'ws';
import type { CellDatabase } from '@keyhole/cells';
import type { KeyholeConfig } from '@keyhole/config';
import { Clock, fingerprintOfHash, isPlausibleToken, nowSeconds, sha256Hex } from '@keyhole/core';
import { ConsoleEvent, LEGACY_FALLBACK_SETTING } from '@keyhole/db';
import { NO_INSTANCE_UUID, WEBSOCKIFY_CONSOLE_TYPE } from '@keyhole/legacy-store';
import type { LegacyAuthorization, LegacyTokenStore } from '@keyhole/legacy-store';
import { ConnectTurns, connectUpstream, UpstreamError } from '@keyhole/upstream';
import { BatchedTokenLookup } from './batched-token-lookup';
import { BridgeStats, CLOSE_CODES, CloseReason, ConsoleBridge } from './console-bridge';
import { ConsoleEventsListener } from './console-events.listener';
import { checkOrigin, extractToken } from './handshake-rules';
import type { LiveSession } from './live-session';
import { ConnectResult, ProxyMetrics } from './proxy.metrics';
import { SessionRecorder } from './session-recorder';
import { SessionRegistry } from './session-registry';

/**
 * Console types whose console serves one client at a time (Nova bug 1425640). The cell database
 * enforces it with a partial unique index on exactly these types (migration
 * AddExclusiveConsoleIndex): adding one here needs a migration there.
 */
const EXCLUSIVE_CONSOLE_TYPES = new Set(['serial']);

/** Backpressure thresholds of each session's console-to-browser direction. */
const HIGH_WATER_MARK_BYTES = 256 * 1024;
const LOW_WATER_MARK_BYTES = 64 * 1024;

/**
 * How long past its TCP connect a console that has not spoken yet keeps the next connect to it
 * waiting (see ConnectTurns: QEMU's VNC server speaks at once, SPICE and serial consoles wait for
 * the client).
 */
const CONSOLE_SETTLE_MS = 50;

export interface ConsoleProxyOptions {
  cellName: string;
  cellDatabaseUrl: string;
  /** This replica's name in session records. */
  instance: string;
  settings: KeyholeConfig['proxy'];
  /** The legacy token store, when one is configured; asked only while the fallback is on. */
  legacy?: LegacyLookup;
  /** The fallback flag forced by configuration (KEYHOLE_LEGACY_FALLBACK); undefined = the cell's flag decides. */
  forcedFallback?: boolean;
  /**
   * Whether each refused token gets its debug line (the log level is debug or trace). Without it
   * only the summary counts are logged, and a flood of guesses costs no client-address lookup.
   */
  logEachRefusal?: boolean;
}

/** What the proxy needs of the legacy token store: its lookup (null when unknown or malformed; throws when it cannot answer in time). */
export type LegacyLookup = Pick<LegacyTokenStore, 'lookup'>;

/** A checked right to one console, from the cell database or from the legacy store. */
interface ConsoleGrant {
  source: 'database' | 'legacy';
  tokenId: number | null;
  fingerprint: string;
  instanceUuid: string;
  consoleType: string;
  host: string;
  port: number;
  internalAccessPath: string | null;
  accessUrlBase: string | null;
  /** Epoch seconds. */
  expires: number;
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
  /** The cell's legacy fallback flag as last read (forced configuration wins). */
  private fallbackFlag = false;
  /** Session-end writes not yet done; stop() waits for them before the pool closes. */
  private readonly pendingWrites = new Set<Promise<unknown>>();
  /**
   * Sessions past their checks whose console is still connecting. Revocations and operator ends
   * that arrive meanwhile mark them here, and the session is closed as soon as it would start.
   */
  private readonly connecting = new Map<string, { tokenId: number | null; cancelled?: CloseReason }>();
  /** Exclusive targets whose previous session's end is still being written (a reconnect waits for it). */
  private readonly endingTargets = new Map<string, Promise<unknown>>();
  private readonly tokenLookup: BatchedTokenLookup;
  private readonly recorder: SessionRecorder;
  /** Connects to one console take turns, so that QEMU's listen backlog of 1 never drops one. */
  private readonly connectTurns = new ConnectTurns(CONSOLE_SETTLE_MS);
  /** Invalid tokens refused since the last summary line (a flood must not write a line per attempt). */
  private refusedTokens = 0;
  private refusalSummaryTimer: NodeJS.Timeout | undefined;

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
    this.tokenLookup = new BatchedTokenLookup(cell.tokens, () => nowSeconds(clock));
    this.recorder = new SessionRecorder(cell.sessions);
    this.events = new ConsoleEventsListener(options.cellDatabaseUrl, `keyhole-proxy:${options.cellName}:events`, {
      onEvent: (event) => this.onConsoleEvent(event),
      reconcile: () => this.reconcile(),
    });
  }

  async start(): Promise<void> {
    this.registry.start();
    this.refusalSummaryTimer = setInterval(() => this.logRefusedTokens(), REFUSAL_SUMMARY_INTERVAL_MS);
    this.refusalSummaryTimer.unref();
    await this.events.start();
  }

  /** Whether a token missing from the cell database is looked up in the legacy store now. */
  get fallbackEnabled(): boolean {
    return this.options.legacy !== undefined && (this.options.forcedFallback ?? this.fallbackFlag);
  }

  /** Reads the cell's fallback flag (at start, on a settings event, after reconnecting). */
  private async readFallbackFlag(): Promise<void> {
    const current = await this.cell.settings.current(LEGACY_FALLBACK_SETTING);
    const enabled = (current?.value as { enabled?: unknown } | undefined)?.enabled === true;
    if (enabled !== this.fallbackFlag) {
      this.logger.log({ cell: this.options.cellName, enabled, forced: this.options.forcedFallback }, 'legacy fallback flag changed');
    }
    this.fallbackFlag = enabled;
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
    clearInterval(this.refusalSummaryTimer);
    this.logRefusedTokens();
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
      this.refuse(socket, 500, 'internal error', 'unavailable');
    });
  };

  private async upgrade(request: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const startedAt = process.hrtime.bigint();
    if (this.draining) return this.refuse(socket, 503, 'proxy is shutting down', 'draining');
    const presented = extractToken(request.url ?? '/', request.headers.cookie);
    if (!presented) return this.refuse(socket, 401, 'a console token is required', 'no_token');
    // Implausible tokens (empty, too long, not printable ASCII) could match nothing: no database work.
    if (!isPlausibleToken(presented)) return this.refuseToken(socket, request, undefined);
    const tokenHash = sha256Hex(presented);

    let grant: ConsoleGrant | null;
    try {
      grant = await this.resolveGrant(presented, tokenHash, request);
    } catch (error) {
      // Fail closed: if the cell database (or, for a fallback, the legacy store) cannot be asked,
      // no one gets in.
      this.logger.error({ err: error, fingerprint: fingerprintOfHash(tokenHash) }, 'token lookup failed');
      return this.refuse(socket, 503, 'console authorization is unavailable', 'unavailable');
    }
    if (!grant) return this.refuseToken(socket, request, tokenHash);
    if (!(this.options.settings.consoleTypes as string[]).includes(grant.consoleType)) {
      return this.refuse(socket, 404, `this proxy does not serve ${grant.consoleType} consoles`, 'wrong_console_type');
    }
    const origin = checkOrigin({
      origin: header(request, 'origin'),
      host: header(request, 'host'),
      forwardedProto: header(request, 'x-forwarded-proto'),
      allowedOrigins: this.options.settings.allowedOrigins,
      accessUrlBase: grant.accessUrlBase,
    });
    if (!origin.allowed) {
      this.logger.log({ fingerprint: grant.fingerprint, reason: origin.reason }, 'refused a websocket origin');
      return this.refuse(socket, 403, origin.reason, 'forbidden_origin');
    }

    const sessionRow = {
      id: randomUUID(),
      tokenId: grant.tokenId,
      tokenSource: grant.source,
      tokenFingerprint: grant.fingerprint,
      instanceUuid: grant.instanceUuid,
      consoleType: grant.consoleType,
      host: grant.host,
      port: grant.port,
      proxyInstance: this.options.instance,
      clientAddress: this.clientAddress(request),
    };
    if (EXCLUSIVE_CONSOLE_TYPES.has(grant.consoleType)) {
      // A browser that reconnects at once must not be refused by its own session's pending end.
      await this.endingTargets.get(targetKey(grant.host, grant.port));
      let holder: string | null;
      try {
        holder = await this.cell.sessions.insertExclusive(sessionRow, this.options.settings.sessionStaleMs);
      } catch (error) {
        this.logger.error({ err: error, fingerprint: grant.fingerprint }, 'could not reserve the console');
        return this.refuse(socket, 503, 'console authorization is unavailable', 'unavailable');
      }
      if (holder !== null) {
        this.logger.log({ fingerprint: grant.fingerprint, heldBy: holder }, 'refused: console in use');
        return this.refuse(socket, 409, `console busy: another session (${holder}) is connected to this ${grant.consoleType} port`, 'console_busy');
      }
    } else {
      // Not on the connect path: the row is written within 20 ms, batched with the other
      // connects' rows and ends (with its own end, when the session is that short).
      void this.recorder.record(sessionRow);
    }

    const upstream = connectUpstream(
      { host: grant.host, port: grant.port, internalAccessPath: grant.internalAccessPath },
      this.options.settings.connectTimeoutMs,
      this.connectTurns,
    );
    // Without a rejection handler until the websocket is open, a fast failure would be unhandled.
    upstream.catch(ignore);
    const pending: Omit<LiveSession, 'bridge'> = { ...sessionRow, expires: grant.expires };
    this.connecting.set(sessionRow.id, { tokenId: grant.tokenId });
    // If ws never completes the upgrade (a bad Sec-WebSocket-Key, a client that left during the
    // checks), release the console and the session at once instead of holding a serial port.
    let settled = false;
    const abandon = (): void => {
      if (settled) return;
      settled = true;
      this.connecting.delete(sessionRow.id);
      upstream.then((connection) => connection.destroy(), ignore);
      this.recordEnd(pending, 'client closed', this.noTraffic());
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
      this.attach(ws, upstream, pending, startedAt).catch((error: unknown) => {
        this.logger.error({ err: error, sessionId: sessionRow.id }, 'session setup failed');
        ws.terminate();
      });
    });
  }

  /**
   * The cell database first (one indexed lookup); only on a miss, and only while the fallback is
   * on, the legacy store. A legacy token is then served exactly like a database one.
   */
  private async resolveGrant(presented: string, tokenHash: string, request: IncomingMessage): Promise<ConsoleGrant | null> {
    const row = await this.tokenLookup.findValid(tokenHash);
    if (row) {
      return {
        source: 'database',
        tokenId: row.id,
        fingerprint: fingerprintOfHash(tokenHash),
        instanceUuid: row.instanceUuid,
        consoleType: row.consoleType,
        host: row.host,
        port: row.port,
        internalAccessPath: row.internalAccessPath,
        accessUrlBase: row.accessUrlBase,
        expires: row.expires,
      };
    }
    if (!this.fallbackEnabled || !this.options.legacy) return null;
    // A token revoked in keyhole must not come back through a legacy copy of it (dual-write).
    if (await this.cell.tokens.isRevokedHash(tokenHash, nowSeconds(this.clock))) return null;
    let legacy: LegacyAuthorization | null;
    try {
      legacy = await this.options.legacy.lookup(presented);
    } catch (error) {
      this.metrics.legacyLookups.inc({ result: 'unavailable' });
      throw error;
    }
    this.metrics.legacyLookups.inc({ result: legacy ? 'served' : 'miss' });
    if (!legacy) return null;
    return {
      source: 'legacy',
      tokenId: null,
      fingerprint: fingerprintOfHash(tokenHash),
      instanceUuid: legacy.instanceUuid ?? NO_INSTANCE_UUID,
      consoleType: legacy.consoleType ?? WEBSOCKIFY_CONSOLE_TYPE,
      host: legacy.host,
      port: legacy.port,
      internalAccessPath: legacy.internalAccessPath,
      // Without an access URL (websockify's format) the page must have come over this very scheme.
      accessUrlBase: legacy.accessUrlBase ?? `${(header(request, 'x-forwarded-proto') ?? 'http').split(',')[0].trim()}://${header(request, 'host') ?? 'localhost'}`,
      expires: legacy.expiresAt ?? Number.MAX_SAFE_INTEGER,
    };
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
    const target = targetKey(session.host, session.port);
    // The recorder writes the end after the row (or with it, when the row is not written yet).
    const write = this.recorder
      .end({ id: session.id, reason, bytesToClient: stats.bytesToClient, bytesToUpstream: stats.bytesToUpstream })
      .finally(() => {
        this.pendingWrites.delete(write);
        if (this.endingTargets.get(target) === write) this.endingTargets.delete(target);
      });
    this.pendingWrites.add(write);
    if (EXCLUSIVE_CONSOLE_TYPES.has(session.consoleType)) this.endingTargets.set(target, write);
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
      this.readFallbackFlag().catch((error: unknown) => this.logger.warn({ err: error }, 'could not read the legacy fallback flag'));
    }
  }

  /** After (re)connecting to the events channel: end sessions whose token or row went meanwhile. */
  private async reconcile(): Promise<void> {
    await this.readFallbackFlag();
    const missing = await this.cell.tokens.findMissing(this.registry.liveTokenIds());
    if (missing.length > 0) this.registry.closeByTokenIds(missing, 'token revoked');
    const ended = await this.cell.sessions.findEnded(this.registry.all().map((session) => session.id));
    if (ended.length > 0) this.registry.closeBySessionIds(ended, 'ended by operator');
  }

  /**
   * 401 for a token that is unknown, expired, revoked or implausible (the same answer for all).
   * Each refusal is logged at debug level (its fingerprint, when it was hashed, and the client);
   * at info level a summary line counts them, so that a flood of guesses does not flood the log.
   */
  private refuseToken(socket: Duplex, request: IncomingMessage, tokenHash: string | undefined): void {
    this.refusedTokens += 1;
    if (this.options.logEachRefusal) {
      this.logger.debug({ fingerprint: tokenHash === undefined ? null : fingerprintOfHash(tokenHash), client: this.clientAddress(request) }, 'refused an invalid or expired token');
    }
    this.refuse(socket, 401, 'invalid or expired token', 'invalid_token');
  }

  private logRefusedTokens(): void {
    if (this.refusedTokens === 0) return;
    this.logger.log({ instance: this.options.instance, refused: this.refusedTokens, intervalMs: REFUSAL_SUMMARY_INTERVAL_MS }, 'refused invalid or expired tokens');
    this.refusedTokens = 0;
  }

  private noTraffic(): BridgeStats {
    const nowMs = this.clock.nowMs();
    return { bytesToClient: 0, bytesToUpstream: 0, startedAtMs: nowMs, endedAtMs: nowMs };
  }

  private refuse(socket: Duplex, status: number, message: string, result: ConnectResult): void {
    this.metrics.connects.inc({ result });
    if (!socket.writable) {
      socket.destroy();
      return;
    }
    const body = `${message}\n`;
    socket.end(
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n` +
        'Connection: close\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n' +
        `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
    socket.once('finish', destroyAfterFinish);
  }

  private clientAddress(request: IncomingMessage): string | null {
    if (this.options.settings.trustProxy) {
      const forwarded = header(request, 'x-forwarded-for')?.split(',')[0]?.trim();
      if (forwarded) return forwarded.slice(0, 64);
    }
    return request.socket.remoteAddress ?? null;
  }
}

/** How often the count of refused tokens is logged (when there were any). */
const REFUSAL_SUMMARY_INTERVAL_MS = 10_000;

function targetKey(host: string, port: number): string {
  return `${host}:${port}`;
}

function header(request: IncomingMessage, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function ignore(): void {}

function destroyAfterFinish(this: Duplex): void {
  this.destroy();
}
