import { Inject, Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import type { Pool } from 'pg';
import { DataSource } from 'typeorm';
import { KEYHOLE_CONFIG, KeyholeConfig, requireControlUrl } from '@keyhole/config';
import { ApiCredentialRepository } from './control/api-credential.repository';
import { CellRepository } from './control/cell.repository';
import { createDataSource } from './data-source.factory';
import { createPool, databaseSettings, migrationSettings } from './database-pool';
import { DatabaseMetrics } from './database.metrics';

export const APPLICATION_NAME = Symbol('keyhole.applicationName');

/** The control database connection pool and its repositories, open for the app's lifetime. */
@Injectable()
export class ControlDatabase implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(ControlDatabase.name);
  /** Every query of the app on the control database; owned, ended on shutdown. */
  readonly pool: Pool;
  /**
   * For `migrateDatabase` only, which opens it for the run: one connection then, none otherwise,
   * so the app's connections to the control database stay within the configured pool size.
   */
  readonly dataSource: DataSource;
  readonly cells: CellRepository;
  readonly credentials: ApiCredentialRepository;

  constructor(@Inject(KEYHOLE_CONFIG) config: KeyholeConfig, @Inject(APPLICATION_NAME) applicationName: string, metrics: DatabaseMetrics) {
    const url = requireControlUrl(config);
    this.pool = createPool({
      ...databaseSettings(config, url, applicationName),
      onDeadlineExceeded: metrics.deadlineCounter('control'),
    });
    this.dataSource = createDataSource('control', migrationSettings(config, url, applicationName));
    this.cells = new CellRepository(this.pool);
    this.credentials = new ApiCredentialRepository(this.pool);
  }

  async onModuleInit(): Promise<void> {
    // Connect once, so that a database that does not answer fails the start, not the first request.
    await this.pool.query('SELECT 1');
    this.logger.log('control database connected');
  }

  /**
   * Whether the database answers a trivial query; for readiness probes. False within the pool's
   * deadlines (KEYHOLE_DB_CONNECT_TIMEOUT_MS, KEYHOLE_DB_QUERY_TIMEOUT_MS) when it does not answer.
   */
  async isReachable(): Promise<boolean> {
    try {
      await this.pool.query('SELECT 1');
      return true;
    } catch {
      return false;
    }
  }

  async onApplicationShutdown(): Promise<void> {
    if (this.dataSource.isInitialized) {
      await this.dataSource.destroy();
    }
    await this.pool.end();
  }
}
