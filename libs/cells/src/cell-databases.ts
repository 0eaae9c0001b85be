import { Inject, Injectable, Logger, OnApplicationShutdown } from '@nestjs/common';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { KeyholeError } from '@keyhole/core';
import {
  APPLICATION_NAME,
  CELL_MIGRATE_COMMAND,
  CellSchemaStatus,
  ControlDatabase,
  createDataSource,
  createPool,
  DatabaseMetrics,
  cellDatabaseSettings,
  CellMigration,
  migrateCellDatabase,
  migrationSettings,
  redactDatabaseUrl,
} from '@keyhole/db';
import { CellDatabase } from './cell-database';
import { cellDatabaseUnreachable, cellNotFound } from './cells.errors';

/**
 * Opens one pool per cell on first use and keeps it. The URL comes from the control database's
 * `cells` row; an unknown cell is CELL_NOT_FOUND, a cell whose database does not answer is
 * CELL_DATABASE_UNREACHABLE (and the next call tries again).
 */
@Injectable()
export class CellDatabases implements OnApplicationShutdown {
  private readonly logger = new Logger(CellDatabases.name);
  private readonly open = new Map<string, Promise<CellDatabase>>();

  constructor(
    @Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig,
    @Inject(APPLICATION_NAME) private readonly applicationName: string,
    private readonly control: ControlDatabase,
    private readonly metrics: DatabaseMetrics,
  ) {}

  get(cellName: string): Promise<CellDatabase> {
    let pending = this.open.get(cellName);
    if (!pending) {
      pending = this.connect(cellName);
      this.open.set(cellName, pending);
      // A failed open is forgotten so that the next request retries instead of failing forever.
      pending.catch(() => this.open.delete(cellName));
    }
    return pending;
  }

  /**
   * Opens a cell's pool at this URL and checks that the database answers (CELL_DATABASE_UNREACHABLE
   * if not) and has keyhole's complete schema (CELL_SCHEMA_INCOMPLETE if not).
   */
  async connectUrl(cellName: string, url: string): Promise<CellDatabase> {
    const database = new CellDatabase(
      cellName,
      createPool({
        ...cellDatabaseSettings(this.config, url, this.applicationNameOf(cellName)),
        onDeadlineExceeded: this.metrics.deadlineCounter(cellName),
      }),
    );
    try {
      await database.open();
    } catch (error) {
      await database.close();
      throw cellDatabaseUnreachable(cellName, error);
    }
    // A cell whose schema is incomplete is refused here, with the command that completes it,
    // rather than served until a statement fails on what is missing.
    let schema: CellSchemaStatus;
    try {
      schema = await database.requireCompleteSchema();
    } catch (error) {
      await database.close();
      throw error instanceof KeyholeError ? error : cellDatabaseUnreachable(cellName, error);
    }
    if (schema.strandedTokens > 0) {
      this.logger.warn(
        { cell: cellName, strandedTokens: schema.strandedTokens },
        `tokens in keyhole's own token table are not served since Nova's console_auth_tokens exists: run \`${CELL_MIGRATE_COMMAND}\` to move them`,
      );
    }
    this.logger.log({ cell: cellName, database: redactDatabaseUrl(url), tokenTable: schema.tokenTable?.table }, 'cell database connected');
    return database;
  }

  /**
   * Brings a cell database to the latest schema through a DataSource of one connection (plus the
   * migration lock's), open for the run only; returns what the run did.
   */
  async migrate(cellName: string, url: string): Promise<CellMigration> {
    const dataSource = createDataSource('cell', migrationSettings(this.config, url, this.applicationNameOf(cellName)));
    try {
      await dataSource.initialize();
    } catch (error) {
      throw cellDatabaseUnreachable(cellName, error);
    }
    try {
      return await migrateCellDatabase(dataSource);
    } finally {
      await dataSource.destroy();
    }
  }

  /** Closes and forgets a cell's pool (after the cell is removed). */
  async close(cellName: string): Promise<void> {
    const pending = this.open.get(cellName);
    this.open.delete(cellName);
    if (!pending) {
      return;
    }
    const database = await pending.catch(() => undefined);
    await database?.close();
  }

  async onApplicationShutdown(): Promise<void> {
    await Promise.all([...this.open.keys()].map((name) => this.close(name)));
  }

  private async connect(cellName: string): Promise<CellDatabase> {
    const cell = await this.control.cells.findByName(cellName);
    if (!cell) {
      throw cellNotFound(cellName);
    }
    return this.connectUrl(cellName, cell.databaseUrl);
  }

  private applicationNameOf(cellName: string): string {
    return `${this.applicationName}:${cellName}`;
  }
}
