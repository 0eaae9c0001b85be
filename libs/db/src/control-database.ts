import { Inject, Injectable, Logger, OnApplicationShutdown, OnModuleInit } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { KEYHOLE_CONFIG, KeyholeConfig, requireControlUrl } from '@keyhole/config';
import { ApiCredentialRepository } from './control/api-credential.repository';
import { CellRepository } from './control/cell.repository';
import { createDataSource } from './data-source.factory';

export const APPLICATION_NAME = Symbol('keyhole.applicationName');

/** The control database connection pool and its repositories, open for the app's lifetime. */
@Injectable()
export class ControlDatabase implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(ControlDatabase.name);
  readonly dataSource: DataSource;
  readonly cells: CellRepository;
  readonly credentials: ApiCredentialRepository;

  constructor(
    @Inject(KEYHOLE_CONFIG) config: KeyholeConfig,
    @Inject(APPLICATION_NAME) applicationName: string,
  ) {
    this.dataSource = createDataSource('control', {
      url: requireControlUrl(config),
      poolSize: config.database.poolSize,
      connectTimeoutMs: config.database.connectTimeoutMs,
      statementTimeoutMs: config.database.statementTimeoutMs,
      applicationName,
    });
    this.cells = new CellRepository(this.dataSource);
    this.credentials = new ApiCredentialRepository(this.dataSource);
  }

  async onModuleInit(): Promise<void> {
    await this.dataSource.initialize();
    this.logger.log('control database connected');
  }

  /** Whether the database answers a trivial query; for readiness probes. */
  async isReachable(): Promise<boolean> {
    try {
      await this.dataSource.query('SELECT 1');
      return true;
    } catch {
      return false;
    }
  }

  async onApplicationShutdown(): Promise<void> {
    if (this.dataSource.isInitialized) await this.dataSource.destroy();
  }
}
