import type { Pool } from 'pg';
import { CellSettingRepository, ConsoleAuthTokenRepository, ConsoleSessionRepository } from '@keyhole/db';

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
