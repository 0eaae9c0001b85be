import { BeforeApplicationShutdown, Inject, Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { hostname } from 'node:os';
import type { Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { CellDatabase } from '@keyhole/cells';
import { KEYHOLE_CONFIG, KeyholeConfig, requireProxyCell } from '@keyhole/config';
import { CLOCK, Clock } from '@keyhole/core';
import { CELL_MIGRATE_COMMAND, cellDatabaseSettings, CellSchemaStatus, createPool, DatabaseMetrics, redactDatabaseUrl } from '@keyhole/db';
import { ConsoleProxy, nativeWebSocketMasking, ProxyMetrics, VncSecurityOptions } from '@keyhole/proxy';
import { describeWebClients } from '@keyhole/web-clients';
import { LEGACY_TOKEN_STORE, LegacyTokenStore } from '@keyhole/legacy-store';
import { RoutesService } from '@keyhole/upstream';
import { VencryptCredentials, watchCertificates, watchVencryptCredentials } from '@keyhole/tls';
import { capPendingConnections } from './connection-caps';
import { boundRequestHeadTime } from './header-deadline';
import { isProxyWorker, joinSupervisor, proxyInstanceName } from './workers';

/**
 * Owns the proxy's resources for the app's lifetime: the cell database pool, the metrics, the
 * ConsoleProxy and its hook on the HTTP server's upgrades. On SIGTERM/SIGINT it stops accepting
 * and drains live sessions for the configured grace period before the app closes.
 */
@Injectable()
export class ProxyRuntime implements OnModuleInit, BeforeApplicationShutdown, OnApplicationShutdown {
  private readonly logger = new Logger('ConsoleProxy');
  readonly cellName: string;
  readonly cell: CellDatabase;
  readonly metrics: ProxyMetrics;
  readonly proxy: ConsoleProxy;
  private releaseGranted: (socket: Duplex) => void = () => undefined;
  private stopWatchingCertificates: (() => void) | null = null;
  /** The VeNCrypt CA and client certificate, when `vencrypt` is allowed; reloaded on SIGHUP. */
  private readonly vencrypt: VencryptCredentials | null;
  private stopWatchingVencrypt: (() => void) | null = null;

  constructor(
    @Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig,
    @Inject(CLOCK) clock: Clock,
    private readonly adapterHost: HttpAdapterHost,
    @Inject(LEGACY_TOKEN_STORE) legacy: LegacyTokenStore | null,
    private readonly routes: RoutesService,
  ) {
    const { cellName, cellDatabaseUrl } = requireProxyCell(config);
    this.cellName = cellName;
    this.metrics = new ProxyMetrics(cellName);
    this.cell = new CellDatabase(
      cellName,
      createPool({
        ...cellDatabaseSettings(config, cellDatabaseUrl, `keyhole-proxy:${cellName}`),
        onDeadlineExceeded: new DatabaseMetrics(this.metrics.registry).deadlineCounter(cellName),
      }),
    );
    // Files that cannot be used stop the start here, naming the setting.
    this.vencrypt = config.proxy.vnc.vencrypt ? VencryptCredentials.load(config.proxy.vnc.vencrypt) : null;
    routes.dialSshNodes(this.metrics.registry);
    if (isProxyWorker()) {
      joinSupervisor(this.metrics.registry);
    }
    this.proxy = new ConsoleProxy(
      {
        cellName,
        cellDatabaseUrl,
        databaseDeadlines: config.database,
        instance: proxyInstanceName(config.proxy.instance, hostname(), config.proxy.port),
        settings: config.proxy,
        routes,
        legacy: legacy ?? undefined,
        forcedFallback: config.legacy.forcedFallback,
        logEachRefusal: config.log.level === 'debug' || config.log.level === 'trace',
        granted: (socket) => this.releaseGranted(socket),
        vncSecurity: this.vncSecurity(),
      },
      this.cell,
      this.metrics,
      clock,
    );
  }

  async onModuleInit(): Promise<void> {
    await this.cell.open();
    // Refuse to start on a cell database whose keyhole schema is incomplete: serving it would
    // answer ready and then fail consoles on what is missing (a 503 on every serial console).
    const schema = await this.cell.requireCompleteSchema();
    this.warnIfStranded(schema.strandedTokens);
    await this.proxy.start();
    this.releaseGranted = capPendingConnections(
      this.server(),
      { perAddress: this.config.proxy.maxPendingPerAddress, total: this.config.proxy.maxPending },
      (reason) => this.metrics.connectionsRefused.inc({ reason }),
    );
    this.server().on('upgrade', this.proxy.handleUpgrade);
    boundRequestHeadTime(this.server(), this.config.proxy.headersTimeoutMs);
    // SIGHUP reloads the certificate too (each worker its own: the supervisor passes SIGHUP on).
    this.stopWatchingCertificates = watchCertificates(this.server(), this.metrics.registry);
    if (this.vencrypt) {
      this.stopWatchingVencrypt = watchVencryptCredentials(this.vencrypt, this.metrics.registry);
    }
    this.logger.log(
      {
        cell: this.cellName,
        database: redactDatabaseUrl(this.config.proxy.cellDatabaseUrl ?? ''),
        consoleTypes: this.config.proxy.consoleTypes,
        webClients: describeWebClients({ spiceHtml5Dir: this.config.proxy.spiceHtml5Dir }),
        legacyStore: this.config.legacy.redisUrl ? this.config.legacy.format : null,
        forcedFallback: this.config.legacy.forcedFallback,
        routesFile: this.config.routes.file ?? null,
        routes: this.routes.current?.size ?? null,
        vncAuthSchemes: this.config.proxy.vnc.authSchemes,
        vencryptClientCertificate: this.vencrypt?.clientCertificate ?? null,
      },
      'console proxy ready',
    );
    if (!nativeWebSocketMasking()) {
      this.logger.warn('bufferutil did not load: browser frames are unmasked in JavaScript, uploads cost about 4x the CPU');
    }
  }

  async beforeApplicationShutdown(signal?: string): Promise<void> {
    const graceMs = signal ? this.config.proxy.drainGraceMs : 0;
    this.logger.log({ signal, liveSessions: this.proxy.liveSessions, graceMs }, 'draining console sessions');
    // The listener stays open while live sessions drain, so that a browser that connects meanwhile
    // gets a clear 503 (and readiness says not ready) instead of a refused TCP connect.
    await this.proxy.drain(graceMs);
    // Then stop accepting; upgraded websockets are no longer the server's.
    this.server().close();
  }

  async onApplicationShutdown(): Promise<void> {
    this.stopWatchingCertificates?.();
    this.stopWatchingVencrypt?.();
    await this.proxy.stop();
    await this.cell.close();
  }

  /**
   * Readiness of the cell database: it answers and has keyhole's complete schema (a database
   * restored from an older backup, or a migration rolled back, is not ready). Also logs stranded
   * tokens when their count changes.
   */
  async checkCellDatabase(): Promise<{ reachable: boolean; schemaComplete: boolean; problems: string[]; strandedTokens: number }> {
    let status: CellSchemaStatus;
    try {
      status = await this.cell.checkSchema();
    } catch {
      return { reachable: false, schemaComplete: false, problems: [], strandedTokens: 0 };
    }
    this.warnIfStranded(status.strandedTokens);
    return {
      reachable: true,
      schemaComplete: status.problems.length === 0,
      problems: status.problems,
      strandedTokens: status.strandedTokens,
    };
  }

  private lastStranded = 0;

  private warnIfStranded(strandedTokens: number): void {
    if (strandedTokens !== this.lastStranded && strandedTokens > 0) {
      this.logger.warn(
        { cell: this.cellName, strandedTokens },
        `tokens in keyhole's own token table are not served since Nova's console_auth_tokens exists: run \`${CELL_MIGRATE_COMMAND}\` to move them`,
      );
    }
    this.lastStranded = strandedTokens;
  }

  /**
   * How VNC sessions negotiate security with their hypervisor; undefined when only `none` is
   * allowed (the default), so that their bytes pass untouched, as before.
   */
  private vncSecurity(): VncSecurityOptions | undefined {
    const schemes = this.config.proxy.vnc.authSchemes;
    if (schemes.length === 1 && schemes[0] === 'none') {
      return undefined;
    }
    const vencrypt = this.vencrypt;
    return {
      schemes,
      vencryptContext: () => vencrypt?.secureContext,
      timeoutMs: this.config.proxy.connectTimeoutMs,
    };
  }

  private server(): Server {
    return this.adapterHost.httpAdapter.getHttpServer() as Server;
  }
}
