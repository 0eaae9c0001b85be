import type { Pool } from 'pg';
import {
  CellSchemaStatus,
  CellSettingRepository,
  checkCellSchema,
  ConsoleAuthTokenRepository,
  ConsoleSessionRepository,
} from '@keyhole/db';
import { cellSchemaIncomplete } from './cells.errors';

/** One cell's database: its pool and the repositories over it. Every cell query goes through one. */
export class CellDatabase {
  readonly tokens: ConsoleAuthTokenRepository;
  readonly sessions: ConsoleSessionRepository;
  readonly settings: CellSettingRepository;
  private closing: Promise<void> | undefined;

  constructor(
    readonly name: string,
    /** Owned: `close()` ends it. */
    readonly pool: Pool,
  ) {
    this.tokens = new ConsoleAuthTokenRepository(name, pool);
    this.sessions = new ConsoleSessionRepository(name, pool);
    this.settings = new CellSettingRepository(name, pool);
  }

  /** Connects once, so that a database that does not answer fails at start rather than on first use. */
  async open(): Promise<void> {
    await this.pool.query('SELECT 1');
  }

  /**
   * What the database lacks of keyhole's schema, if anything, and how many tokens are stranded in
   * keyhole's own token table since Nova's appeared (see checkCellSchema).
   */
  checkSchema(nowSeconds = Math.floor(Date.now() / 1000)): Promise<CellSchemaStatus> {
    return checkCellSchema(this.pool, nowSeconds);
  }

  /** Throws CELL_SCHEMA_INCOMPLETE (naming the cell and `keyhole migrate`) unless the schema is complete. */
  async requireCompleteSchema(): Promise<CellSchemaStatus> {
    const status = await this.checkSchema();
    if (status.problems.length > 0) {
      throw cellSchemaIncomplete(this.name, status.problems);
    }
    return status;
  }

  /** Whether the database answers a trivial query; for readiness probes. */
  isReachable(): Promise<boolean> {
    return this.pool.query('SELECT 1').then(
      () => true,
      () => false,
    );
  }

  /** Ends the pool once its connections are back; later calls wait for the same end. */
  close(): Promise<void> {
    this.closing ??= this.pool.end();
    return this.closing;
  }
}
