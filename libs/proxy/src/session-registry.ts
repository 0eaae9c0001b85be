import { Logger } from '@nestjs/common';
import type { ConsoleSessionRepository } from '@keyhole/db';
import type { CloseReason } from './console-bridge';
import type { LiveSession } from './live-session';

export interface SessionLimits {
  heartbeatIntervalMs: number;
  /** 0 = never. */
  idleTimeoutMs: number;
  /** 0 = unlimited. */
  maxSessionMs: number;
  enforceTokenExpiry: boolean;
  sessionHeartbeatMs: number;
}

/** How often limits are checked; the granularity of idle, length and expiry enforcement. */
const SWEEP_INTERVAL_MS = 1_000;

/**
 * The live sessions of this proxy process. One timer for all of them (not one per session):
 * it pings browsers, ends idle, overlong and (optionally) expired sessions, and periodically
 * writes every live session's last-seen time and byte counts in one statement, which is what
 * lets other replicas tell a live session from one whose proxy died.
 */
export class SessionRegistry {
  private readonly logger = new Logger(SessionRegistry.name);
  private readonly sessions = new Map<string, LiveSession>();
  private readonly byToken = new Map<number, Set<LiveSession>>();
  private sweepTimer: NodeJS.Timeout | undefined;
  private lastPingAtMs = 0;
  private lastHeartbeatAtMs = 0;
  private heartbeatInFlight = false;

  constructor(
    private readonly limits: SessionLimits,
    private readonly store: ConsoleSessionRepository,
    private readonly nowMs: () => number,
  ) {}

  start(): void {
    const now = this.nowMs();
    this.lastPingAtMs = now;
    this.lastHeartbeatAtMs = now;
    this.sweepTimer = setInterval(() => this.sweep(), SWEEP_INTERVAL_MS);
    this.sweepTimer.unref();
  }

  stop(): void {
    clearInterval(this.sweepTimer);
  }

  get size(): number {
    return this.sessions.size;
  }

  all(): LiveSession[] {
    return [...this.sessions.values()];
  }

  add(session: LiveSession): void {
    this.sessions.set(session.id, session);
    if (session.tokenId !== null) {
      const set = this.byToken.get(session.tokenId) ?? new Set();
      set.add(session);
      this.byToken.set(session.tokenId, set);
    }
  }

  remove(session: LiveSession): void {
    this.sessions.delete(session.id);
    if (session.tokenId !== null) {
      const set = this.byToken.get(session.tokenId);
      set?.delete(session);
      if (set?.size === 0) {
        this.byToken.delete(session.tokenId);
      }
    }
  }

  /** Ends every live session using one of these tokens; returns how many. */
  closeByTokenIds(tokenIds: number[], reason: CloseReason): number {
    let closed = 0;
    for (const tokenId of tokenIds) {
      for (const session of this.byToken.get(tokenId) ?? []) {
        session.bridge.close(reason);
        closed += 1;
      }
    }
    return closed;
  }

  /** Ends the live sessions of these instances whose token came from the legacy store. */
  closeLegacyByInstances(instanceUuids: string[], reason: CloseReason): number {
    const instances = new Set(instanceUuids);
    let closed = 0;
    for (const session of this.sessions.values()) {
      if (session.tokenId === null && instances.has(session.instanceUuid)) {
        session.bridge.close(reason);
        closed += 1;
      }
    }
    return closed;
  }

  closeBySessionIds(sessionIds: string[], reason: CloseReason): number {
    let closed = 0;
    for (const id of sessionIds) {
      const session = this.sessions.get(id);
      if (session) {
        session.bridge.close(reason);
        closed += 1;
      }
    }
    return closed;
  }

  closeAll(reason: CloseReason): void {
    for (const session of this.sessions.values()) {
      session.bridge.close(reason);
    }
  }

  /** Token ids of the live sessions (to reconcile revocations missed while not listening). */
  liveTokenIds(): number[] {
    return [...this.byToken.keys()];
  }

  private sweep(): void {
    const now = this.nowMs();
    const nowSeconds = Math.floor(now / 1000);
    // Half a sweep of slack: timers drift by a millisecond, which must not skip a whole ping.
    const ping = now - this.lastPingAtMs >= this.limits.heartbeatIntervalMs - SWEEP_INTERVAL_MS / 2;
    if (ping) {
      this.lastPingAtMs = now;
    }
    for (const session of this.sessions.values()) {
      const bridge = session.bridge;
      if (bridge.closeReason !== undefined) {
        continue;
      }
      if (ping && !bridge.ping()) {
        bridge.close('heartbeat timeout');
      } else if (this.limits.idleTimeoutMs > 0 && now - bridge.lastActivityAtMs >= this.limits.idleTimeoutMs) {
        bridge.close('idle timeout');
      } else if (this.limits.maxSessionMs > 0 && now - bridge.startedAtMs >= this.limits.maxSessionMs) {
        bridge.close('session time limit');
      } else if (this.limits.enforceTokenExpiry && session.expires <= nowSeconds) {
        bridge.close('token expired');
      }
    }
    if (now - this.lastHeartbeatAtMs >= this.limits.sessionHeartbeatMs && !this.heartbeatInFlight) {
      this.lastHeartbeatAtMs = now;
      this.writeHeartbeat();
    }
  }

  private writeHeartbeat(): void {
    const counters = this.all().map((session) => ({
      id: session.id,
      bytesToClient: session.bridge.bytesToClient,
      bytesToUpstream: session.bridge.bytesToUpstream,
    }));
    if (counters.length === 0) {
      return;
    }
    this.heartbeatInFlight = true;
    this.store
      .heartbeat(counters)
      .then((endedElsewhere) => {
        // Their rows were ended (reaped while this proxy could not report, or by an operator):
        // the sessions go too, so that the database's live list and this proxy agree.
        if (endedElsewhere.length > 0) {
          this.logger.warn({ sessions: endedElsewhere.length }, 'closed sessions whose records were ended meanwhile');
          this.closeBySessionIds(endedElsewhere, 'proxy lost');
        }
      })
      .catch((error: unknown) => this.logger.warn({ err: error, sessions: counters.length }, 'could not record session heartbeats'))
      .finally(() => {
        this.heartbeatInFlight = false;
      });
  }
}
