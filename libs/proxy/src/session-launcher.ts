import { Logger } from '@nestjs/common';
import type { Duplex } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { WebSocket } from 'ws';
import type { Clock } from '@keyhole/core';
import { connectorDialer } from '@keyhole/connector';
import { ConnectTurns, connectUpstream, Dialer, dialTcp, RouteVia, UpstreamError } from '@keyhole/upstream';
import { BridgeStats, CLOSE_CODES, CloseReason, ConsoleBridge } from './console-bridge';
import type { LiveSession } from './live-session';
import { NO_ROUTE_LABEL } from './proxy.metrics';
import type { ProxyMetrics, RouteConnectResult } from './proxy.metrics';
import type { SessionRecorder } from './session-recorder';
import type { SessionRegistry } from './session-registry';
import type { UpgradeGate, UpgradeGrant } from './upgrade-gate';
import { NegotiatedVnc, negotiateVncSecurity, VncSecurityError, VncSecurityOptions } from './vnc-security';

/** Backpressure thresholds of each session's console-to-browser direction. */
const HIGH_WATER_MARK_BYTES = 256 * 1024;
const LOW_WATER_MARK_BYTES = 64 * 1024;

/**
 * How long past its TCP connect a console that has not spoken yet keeps the next connect to it
 * waiting (see ConnectTurns: QEMU's VNC server speaks at once, SPICE and serial consoles wait for
 * the client).
 */
const CONSOLE_SETTLE_MS = 50;

/** A granted session whose console is being connected. */
export interface PendingSession {
  grant: UpgradeGrant;
  upstream: ReturnType<typeof connectUpstream>;
}

/**
 * Takes a granted session from its console connect to its end: connects the console while the
 * websocket upgrade completes, starts the byte pump (or closes the websocket when the console is
 * unreachable, the session was ended meanwhile, or the proxy drains), and records every end once,
 * in the session record, the log and the metrics.
 */
export class SessionLauncher {
  // Its lines are the proxy's.
  private readonly logger = new Logger('ConsoleProxy');
  /** Connects to one console take turns, so that QEMU's listen backlog of 1 never drops one. */
  private readonly connectTurns = new ConnectTurns(CONSOLE_SETTLE_MS);
  /**
   * Sessions past their checks whose console is still connecting. Revocations and operator ends
   * that arrive meanwhile mark them here, and the session is closed as soon as it would start.
   */
  private readonly connecting = new Map<string, { tokenId: number | null; cancelled?: CloseReason }>();
  /** Session-end writes not yet done; waitForWrites() waits for them before the pool closes. */
  private readonly pendingWrites = new Set<Promise<unknown>>();

  constructor(
    private readonly connectTimeoutMs: number,
    private readonly registry: SessionRegistry,
    private readonly recorder: SessionRecorder,
    private readonly gate: Pick<UpgradeGate, 'releaseWhenWritten'>,
    private readonly metrics: ProxyMetrics,
    private readonly clock: Clock,
    private readonly draining: () => boolean,
    /** RFB security with VNC consoles' hypervisors; null when only `none` is allowed (bytes pass untouched). */
    private readonly vncSecurity: VncSecurityOptions | null = null,
  ) {}

  /** Starts connecting to the granted console. */
  connect(grant: UpgradeGrant): PendingSession {
    const upstream = this.dial(grant);
    // Without a rejection handler until the websocket is open, a fast failure would be unhandled.
    upstream.catch(ignore);
    this.observeDial(grant.route, upstream);
    this.connecting.set(grant.id, { tokenId: grant.tokenId });
    return { grant, upstream };
  }

  /** Opens the console's stream the way the grant's route reaches it. */
  private dial(grant: UpgradeGrant): ReturnType<typeof connectUpstream> {
    return connectUpstream(
      { host: grant.host, port: grant.port, internalAccessPath: grant.internalAccessPath },
      this.connectTimeoutMs,
      this.connectTurns,
      dialerOf(grant.via),
    );
  }

  /**
   * Counts every console stream opened through a route, by result, and times the ones that opened
   * (from the dial, turns included, to a connected stream), whether or not the websocket is still
   * there to use it.
   */
  private observeDial(route: string | null, upstream: Promise<unknown>): void {
    const label = route ?? NO_ROUTE_LABEL;
    const dialledAt = process.hrtime.bigint();
    upstream.then(
      () => {
        this.metrics.routeConnectSeconds.observe({ route: label }, Number(process.hrtime.bigint() - dialledAt) / 1e9);
        this.metrics.routeConnects.inc({ route: label, result: 'ok' });
      },
      (error: unknown) => this.metrics.routeConnects.inc({ route: label, result: routeConnectResult(error) }),
    );
  }

  /** The websocket never opened: releases the console and ends the session. */
  abandon({ grant, upstream }: PendingSession): void {
    this.connecting.delete(grant.id);
    upstream.then((connection) => connection.destroy(), ignore);
    this.recordEnd(grant, 'client closed', this.noTraffic());
  }

  /** Pipes the open websocket to the console once it is connected. */
  async start(ws: WebSocket, { grant: session, upstream: upstreamPromise }: PendingSession, startedAt: bigint): Promise<void> {
    let upstream;
    try {
      upstream = await upstreamPromise;
    } catch (error) {
      const reason = error instanceof UpstreamError ? error.reason : 'connect failed';
      this.metrics.connects.inc({ result: 'upstream_failed' });
      this.logger.warn(
        { sessionId: session.id, fingerprint: session.tokenFingerprint, instance: session.instanceUuid, route: session.route, reason },
        'console unreachable',
      );
      this.endUnstarted(ws, session, 'console unreachable', `console unreachable: ${reason}`);
      return;
    }
    if (this.endsBeforeStart(ws, session, upstream)) {
      return;
    }
    let consoleStream: Duplex = upstream;
    let clientBytes: Buffer | undefined;
    // Only when a scheme other than `none` is allowed: the default path never parses RFB.
    if (this.vncSecurity !== null && session.consoleType === 'novnc') {
      const negotiated = await this.negotiateVncSecurity(ws, session, upstream, this.vncSecurity);
      if (negotiated === undefined || this.endsBeforeStart(ws, session, negotiated.console)) {
        return;
      }
      consoleStream = negotiated.console;
      clientBytes = negotiated.clientBytes;
    }
    this.connecting.delete(session.id);
    const live: LiveSession = {
      ...session,
      bridge: new ConsoleBridge(ws, consoleStream, {
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
    if (clientBytes !== undefined && clientBytes.length > 0) {
      // What the browser sent past the security exchange, before the pump took over.
      consoleStream.write(clientBytes);
    }
    live.bridge.start();
  }

  /**
   * Ends a session whose console is connected but which must not start: the browser left, the proxy
   * drains, or it was revoked or ended meanwhile. Returns whether it ended it.
   */
  private endsBeforeStart(ws: WebSocket, session: UpgradeGrant, consoleStream: Duplex): boolean {
    const cancelled = this.connecting.get(session.id)?.cancelled;
    const draining = this.draining();
    if (ws.readyState === WebSocket.OPEN && !draining && !cancelled) {
      return false;
    }
    consoleStream.destroy();
    this.endUnstarted(ws, session, cancelled ?? (draining ? 'proxy shutdown' : 'client closed'));
    return true;
  }

  /**
   * Ends a session that never reached the pump: closes the browser's websocket (if still open) with
   * `reason`'s code and `closeMessage`, and records the end. The console's stream is the caller's.
   */
  private endUnstarted(ws: WebSocket, session: UpgradeGrant, reason: CloseReason, closeMessage: string = reason): void {
    this.connecting.delete(session.id);
    // Paused since the upgrade: read it again, or its close reply is never seen (ws's 30 s close timeout).
    ws.resume();
    if (ws.readyState === WebSocket.OPEN) {
      ws.close(CLOSE_CODES[reason], closeMessage);
    }
    this.recordEnd(session, reason, this.noTraffic());
  }

  /**
   * Negotiates RFB security with the hypervisor and the browser (README's VNC security to the
   * hypervisor). On failure ends the session (1011 for the hypervisor's side, 1008 for the
   * browser's) with the short reason, logged with the token's fingerprint and counted; returns
   * undefined then.
   */
  private async negotiateVncSecurity(
    ws: WebSocket,
    session: UpgradeGrant,
    upstream: Duplex,
    options: VncSecurityOptions,
  ): Promise<NegotiatedVnc | undefined> {
    try {
      const negotiated = await negotiateVncSecurity(ws, upstream, options);
      this.metrics.vncSecurity.inc({ scheme: negotiated.scheme });
      return negotiated;
    } catch (error) {
      const failure = error instanceof VncSecurityError ? error : new VncSecurityError('console', 'security negotiation failed');
      if (failure.side === 'client gone') {
        this.endUnstarted(ws, session, 'client closed');
        return undefined;
      }
      const reason: CloseReason = failure.side === 'console' ? 'console security failed' : 'client security refused';
      this.metrics.connects.inc({ result: failure.side === 'console' ? 'console_security_failed' : 'client_security_refused' });
      this.logger.warn(
        {
          sessionId: session.id,
          fingerprint: session.tokenFingerprint,
          instance: session.instanceUuid,
          route: session.route,
          reason: failure.reason,
          detail: failure.detail,
        },
        failure.side === 'console' ? 'VNC security with the hypervisor failed' : 'browser refused in the VNC security exchange',
      );
      this.endUnstarted(ws, session, reason, failure.reason);
      return undefined;
    }
  }

  /** Marks the connecting sessions of these tokens: they close as soon as they would start. */
  cancelByTokenIds(revoked: ReadonlySet<number>, reason: CloseReason): void {
    for (const entry of this.connecting.values()) {
      if (entry.tokenId !== null && revoked.has(entry.tokenId)) {
        entry.cancelled = reason;
      }
    }
  }

  /** Marks these connecting sessions: they close as soon as they would start. */
  cancelBySessionIds(sessionIds: readonly string[], reason: CloseReason): void {
    for (const id of sessionIds) {
      const entry = this.connecting.get(id);
      if (entry) {
        entry.cancelled = reason;
      }
    }
  }

  /** Waits, until `deadlineMs` (Date.now() time) at most, for live sessions to end and every record to be written. */
  async waitForWrites(deadlineMs: number): Promise<void> {
    while ((this.registry.size > 0 || this.pendingWrites.size > 0) && Date.now() < deadlineMs) {
      await Promise.race([Promise.allSettled([...this.pendingWrites]), delay(25)]);
    }
    // Rows of sessions that never got as far as an end are still queued: write them too, retrying
    // until the deadline; what is left then is ended by this proxy's next start or by the reaper.
    await this.recorder.flush(deadlineMs);
  }

  private recordEnd(session: Omit<LiveSession, 'bridge'>, reason: CloseReason, stats: BridgeStats): void {
    this.metrics.sessionsEnded.inc({ reason: reason.replace(/ /g, '_') });
    this.logger.log(
      {
        sessionId: session.id,
        fingerprint: session.tokenFingerprint,
        instance: session.instanceUuid,
        consoleType: session.consoleType,
        route: session.route,
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

  private noTraffic(): BridgeStats {
    const nowMs = this.clock.nowMs();
    return { bytesToClient: 0, bytesToUpstream: 0, startedAtMs: nowMs, endedAtMs: nowMs };
  }
}

function ignore(): void {}

/** The result label of a console stream that could not be opened. */
function routeConnectResult(error: unknown): RouteConnectResult {
  return error instanceof UpstreamError && error.reason === 'connect timeout' ? 'timeout' : 'upstream_failed';
}

/** How a route opens a stream to one of its consoles. */
function dialerOf(via: RouteVia): Dialer {
  switch (via.kind) {
    case 'direct':
      return dialTcp;
    case 'ssh':
      return via.dial;
    case 'connector':
      return connectorDialer(via.socket);
  }
}
