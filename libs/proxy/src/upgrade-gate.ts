import { Logger } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { type ForwardedRequest, type KeyholeConfig, TrustedProxies } from '@keyhole/config';
import { Clock, fingerprintOfHash, isPlausibleToken, nowSeconds, sha256Hex, waitAtMost } from '@keyhole/core';
import { LEGACY_FALLBACK_SETTING } from '@keyhole/db';
import type {
  CellSettingRepository,
  ConsoleAuthTokenRepository,
  ConsoleGrantRow,
  ConsoleSessionRepository,
  NewConsoleSessionRow,
} from '@keyhole/db';
import { NO_INSTANCE_UUID, WEBSOCKIFY_CONSOLE_TYPE } from '@keyhole/legacy-store';
import type { LegacyAuthorization, LegacyTokenStore } from '@keyhole/legacy-store';
import type { RoutesService, RouteVia } from '@keyhole/upstream';
import { BatchedTokenLookup } from './batched-token-lookup';
import { checkOrigin, extractToken } from './handshake-rules';
import type { ProxyMetrics } from './proxy.metrics';
import type { SessionRecorder } from './session-recorder';
import type { Refusal } from './upgrade-refusals';

/**
 * Console types whose console serves one client at a time (Nova bug 1425640). The cell database
 * enforces it with a partial unique index on exactly these types (migration
 * AddExclusiveConsoleIndex): adding one here needs a migration there.
 */
const EXCLUSIVE_CONSOLE_TYPES = new Set(['serial']);

/** What the proxy needs of the legacy token store: its lookup (null when unknown or malformed; throws when it cannot answer in time). */
export type LegacyLookup = Pick<LegacyTokenStore, 'lookup'>;

export interface UpgradeGateOptions {
  cellName: string;
  /** This replica's name in session records. */
  instance: string;
  settings: Pick<KeyholeConfig['proxy'], 'consoleTypes' | 'allowedOrigins' | 'trustedProxies' | 'sessionStaleMs' | 'connectTimeoutMs'>;
  /** The routes table: a destination that matches no route is refused (403, `unroutable`). */
  routes: Pick<RoutesService, 'decide'>;
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

/** What the gate asks of the cell database. */
export interface UpgradeGateCell {
  tokens: Pick<ConsoleAuthTokenRepository, 'findValidByHashes' | 'isRevokedHash'>;
  sessions: Pick<ConsoleSessionRepository, 'insertExclusive'>;
  settings: Pick<CellSettingRepository, 'current'>;
}

/**
 * A checked right to one console: the session's row (written, for an exclusive console, or queued)
 * and what the proxy needs to reach the console and to end the session in time.
 */
export interface UpgradeGrant extends NewConsoleSessionRow {
  kind: 'grant';
  internalAccessPath: string | null;
  /** The token's expiry, epoch seconds. */
  expires: number;
  /** The route that reaches the console (null without a routes file: a direct connect, as always). */
  route: string | null;
  via: RouteVia;
}

/** What a token grants, from the cell database or from the legacy store, before the upgrade's own checks. */
interface TokenGrant {
  source: 'database' | 'legacy';
  tokenId: number | null;
  instanceUuid: string;
  consoleType: string;
  host: string;
  port: number;
  internalAccessPath: string | null;
  accessUrlBase: string | null;
  /** Epoch seconds. */
  expires: number;
}

/** How often the count of refused tokens is logged (when there were any). */
const REFUSAL_SUMMARY_INTERVAL_MS = 10_000;

const NO_TOKEN: Refusal = { kind: 'no_token' };
const INVALID_TOKEN: Refusal = { kind: 'invalid_token' };
const UNAVAILABLE: Refusal = { kind: 'unavailable' };
const UNROUTABLE: Refusal = { kind: 'unroutable' };
const DIRECT: RouteVia = { kind: 'direct' };

/**
 * Decides a websocket upgrade before it is accepted, as ws's verifyClient does before
 * handleUpgrade: the token (query or cookie; implausible ones cost no database work; the cell
 * database first, the legacy store on a miss while the fallback is on), the console type, the
 * origin (Nova's rules), the destination (a route must allow the token's host:port: rows that Nova
 * or an older keyhole wrote, and legacy tokens, were never checked against the routes), and for an
 * exclusive console the claim of its one session. It answers a
 * grant or a refusal and never throws for a request it refuses; failures to ask a store fail closed.
 */
export class UpgradeGate {
  // Its lines are the proxy's.
  private readonly logger = new Logger('ConsoleProxy');
  private readonly tokenLookup: BatchedTokenLookup;
  /** Whose X-Forwarded-For and X-Forwarded-Proto are believed (KEYHOLE_TRUSTED_PROXIES). */
  private readonly trustedProxies: TrustedProxies;
  /** The cell's legacy fallback flag as last read (forced configuration wins). */
  private fallbackFlag = false;
  /** Exclusive targets whose previous session's end is still being written (a reconnect waits for it). */
  private readonly endingTargets = new Map<string, Promise<unknown>>();
  /** Invalid tokens refused since the last summary line (a flood must not write a line per attempt). */
  private refusedTokens = 0;
  private refusalSummaryTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly options: UpgradeGateOptions,
    private readonly cell: UpgradeGateCell,
    private readonly recorder: Pick<SessionRecorder, 'record'>,
    private readonly metrics: Pick<ProxyMetrics, 'legacyLookups'>,
    private readonly clock: Clock,
  ) {
    this.tokenLookup = new BatchedTokenLookup(cell.tokens, () => nowSeconds(clock));
    this.trustedProxies = new TrustedProxies(options.settings.trustedProxies);
  }

  /** Starts the summary line of refused tokens. */
  start(): void {
    this.refusalSummaryTimer = setInterval(() => this.logRefusedTokens(), REFUSAL_SUMMARY_INTERVAL_MS);
    this.refusalSummaryTimer.unref();
  }

  /** Stops it, logging the count of the last interval. */
  stop(): void {
    clearInterval(this.refusalSummaryTimer);
    this.logRefusedTokens();
  }

  /** Whether a token missing from the cell database is looked up in the legacy store now. */
  get fallbackEnabled(): boolean {
    return this.options.legacy !== undefined && (this.options.forcedFallback ?? this.fallbackFlag);
  }

  /** Reads the cell's fallback flag (at start, on a settings event, after reconnecting). */
  async readFallbackFlag(): Promise<void> {
    const current = await this.cell.settings.current(LEGACY_FALLBACK_SETTING);
    const enabled = (current?.value as { enabled?: unknown } | undefined)?.enabled === true;
    if (enabled !== this.fallbackFlag) {
      this.logger.log({ cell: this.options.cellName, enabled, forced: this.options.forcedFallback }, 'legacy fallback flag changed');
    }
    this.fallbackFlag = enabled;
  }

  /** Decides an upgrade request: a grant (the session's row is claimed or queued) or a refusal. */
  async check(request: IncomingMessage): Promise<UpgradeGrant | Refusal> {
    const presented = extractToken(request.url ?? '/', request.headers.cookie);
    if (!presented) {
      return NO_TOKEN;
    }
    // Implausible tokens could match nothing: no database work.
    if (!isPlausibleToken(presented)) {
      return this.invalidToken(request, undefined);
    }
    const tokenHash = sha256Hex(presented);

    let token: TokenGrant | null;
    try {
      const row = await this.tokenLookup.findValid(tokenHash);
      token = row ? databaseGrant(row) : await this.legacyGrant(presented, tokenHash, request);
    } catch (error) {
      // Fail closed: if the cell database (or, for a fallback, the legacy store) cannot be asked,
      // no one gets in.
      this.logger.error({ err: error, fingerprint: fingerprintOfHash(tokenHash) }, 'token lookup failed');
      return UNAVAILABLE;
    }
    if (!token) {
      return this.invalidToken(request, tokenHash);
    }
    if (!(this.options.settings.consoleTypes as string[]).includes(token.consoleType)) {
      return { kind: 'wrong_console_type', consoleType: token.consoleType };
    }
    const fingerprint = fingerprintOfHash(tokenHash);
    const origin = checkOrigin({
      origin: header(request, 'origin'),
      host: header(request, 'host'),
      forwardedProto: this.forwarded(request).protocol ?? undefined,
      allowedOrigins: this.options.settings.allowedOrigins,
      accessUrlBase: token.accessUrlBase,
    });
    if (!origin.allowed) {
      this.logger.log({ fingerprint, reason: origin.reason }, 'refused a websocket origin');
      return { kind: 'forbidden_origin', reason: origin.reason };
    }
    const destination = this.options.routes.decide(token.host, token.port);
    if (!destination.routable) {
      // An attempt to reach something no route allows (the database, the API...): worth a warning.
      this.logger.warn({ fingerprint, host: token.host, port: token.port, source: token.source }, 'refused: no route to the console');
      return UNROUTABLE;
    }

    const grant: UpgradeGrant = {
      kind: 'grant',
      id: randomUUID(),
      tokenId: token.tokenId,
      tokenSource: token.source,
      tokenFingerprint: fingerprint,
      instanceUuid: token.instanceUuid,
      consoleType: token.consoleType,
      host: token.host,
      port: token.port,
      proxyInstance: this.options.instance,
      clientAddress: this.clientAddress(request),
      internalAccessPath: token.internalAccessPath,
      expires: token.expires,
      route: destination.route?.name ?? null,
      via: destination.route?.via ?? DIRECT,
    };
    if (!EXCLUSIVE_CONSOLE_TYPES.has(grant.consoleType)) {
      // Not on the connect path: the row is written within 20 ms, batched with the other
      // connects' rows and ends (with its own end, when the session is that short).
      void this.recorder.record(grant);
      return grant;
    }
    // A browser that reconnects at once must not be refused by its own session's pending end; an
    // end the database does not take now (retried until it lands) holds it back no longer than a
    // console connect may take.
    const ending = this.endingTargets.get(targetKey(grant.host, grant.port));
    if (ending) {
      await waitAtMost(ending, this.options.settings.connectTimeoutMs);
    }
    let holder: string | null;
    try {
      holder = await this.cell.sessions.insertExclusive(grant, this.options.settings.sessionStaleMs);
    } catch (error) {
      this.logger.error({ err: error, fingerprint }, 'could not reserve the console');
      return UNAVAILABLE;
    }
    if (holder !== null) {
      this.logger.log({ fingerprint, heldBy: holder }, 'refused: console in use');
      return { kind: 'console_busy', consoleType: grant.consoleType, heldBy: holder };
    }
    return grant;
  }

  /**
   * Holds back the next claim of an exclusive console until this session's end is written, so
   * that a browser reconnecting at once is not refused by its own session. `written` never rejects.
   */
  releaseWhenWritten(session: Pick<NewConsoleSessionRow, 'consoleType' | 'host' | 'port'>, written: Promise<unknown>): void {
    if (!EXCLUSIVE_CONSOLE_TYPES.has(session.consoleType)) {
      return;
    }
    const target = targetKey(session.host, session.port);
    this.endingTargets.set(target, written);
    const release = (): void => {
      if (this.endingTargets.get(target) === written) {
        this.endingTargets.delete(target);
      }
    };
    written.then(release, release);
  }

  /**
   * The client and scheme as the forwarding headers say, believed only from a trusted proxy (the
   * right-most untrusted X-Forwarded-For hop is the client); from any other peer, the peer itself
   * and no forwarded scheme.
   */
  private forwarded(request: IncomingMessage): ForwardedRequest {
    return this.trustedProxies.resolve(
      request.socket.remoteAddress,
      header(request, 'x-forwarded-for'),
      header(request, 'x-forwarded-proto'),
    );
  }

  /** The client's address for session records and logs. */
  private clientAddress(request: IncomingMessage): string | null {
    return this.forwarded(request).clientAddress;
  }

  /**
   * Only on a miss in the cell database, and only while the fallback is on, the legacy store. A
   * legacy token is then served exactly like a database one.
   */
  private async legacyGrant(presented: string, tokenHash: string, request: IncomingMessage): Promise<TokenGrant | null> {
    if (!this.fallbackEnabled || !this.options.legacy) {
      return null;
    }
    // A token revoked in keyhole must not come back through a legacy copy of it (dual-write).
    if (await this.cell.tokens.isRevokedHash(tokenHash, nowSeconds(this.clock))) {
      return null;
    }
    let legacy: LegacyAuthorization | null;
    try {
      legacy = await this.options.legacy.lookup(presented);
    } catch (error) {
      this.metrics.legacyLookups.inc({ result: 'unavailable' });
      throw error;
    }
    this.metrics.legacyLookups.inc({ result: legacy ? 'served' : 'miss' });
    if (!legacy) {
      return null;
    }
    return {
      source: 'legacy',
      tokenId: null,
      instanceUuid: legacy.instanceUuid ?? NO_INSTANCE_UUID,
      consoleType: legacy.consoleType ?? WEBSOCKIFY_CONSOLE_TYPE,
      host: legacy.host,
      port: legacy.port,
      internalAccessPath: legacy.internalAccessPath,
      // Without an access URL (websockify's format) the page must have come over this very scheme.
      accessUrlBase:
        legacy.accessUrlBase ??
        `${this.forwarded(request).protocol ?? connectionScheme(request)}://${header(request, 'host') ?? 'localhost'}`,
      expires: legacy.expiresAt ?? Number.MAX_SAFE_INTEGER,
    };
  }

  /**
   * 401 for a token that is unknown, expired, revoked or implausible (the same answer for all).
   * Each refusal is logged at debug level (its fingerprint, when it was hashed, and the client);
   * a summary line counts them (logRefusedTokens), so that a flood of guesses does not flood the log.
   */
  private invalidToken(request: IncomingMessage, tokenHash: string | undefined): Refusal {
    this.refusedTokens += 1;
    if (this.options.logEachRefusal) {
      this.logger.debug(
        { fingerprint: tokenHash === undefined ? null : fingerprintOfHash(tokenHash), client: this.clientAddress(request) },
        'refused an invalid or expired token',
      );
    }
    return INVALID_TOKEN;
  }

  private logRefusedTokens(): void {
    if (this.refusedTokens === 0) {
      return;
    }
    this.logger.log(
      { instance: this.options.instance, refused: this.refusedTokens, intervalMs: REFUSAL_SUMMARY_INTERVAL_MS },
      'refused invalid or expired tokens',
    );
    this.refusedTokens = 0;
  }
}

function databaseGrant(row: ConsoleGrantRow): TokenGrant {
  return {
    source: 'database',
    tokenId: row.id,
    instanceUuid: row.instanceUuid,
    consoleType: row.consoleType,
    host: row.host,
    port: row.port,
    internalAccessPath: row.internalAccessPath,
    accessUrlBase: row.accessUrlBase,
    expires: row.expires,
  };
}

function targetKey(host: string, port: number): string {
  return `${host}:${port}`;
}

function header(request: IncomingMessage, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** The scheme of the connection itself: https when the proxy serves TLS on it (KEYHOLE_PROXY_TLS_*). */
function connectionScheme(request: IncomingMessage): 'http' | 'https' {
  return (request.socket as { encrypted?: boolean }).encrypted === true ? 'https' : 'http';
}
