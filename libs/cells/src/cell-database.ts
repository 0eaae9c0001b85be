import { DataSource } from 'typeorm';
import { CellSettingRepository, ConsoleAuthTokenRepository, ConsoleSessionRepository } from '@keyhole/db';

/** One cell's database: its pool and the repositories over it. Every cell query goes through one. */
export class CellDatabase {
  readonly tokens: ConsoleAuthTokenRepository;
  readonly sessions: ConsoleSessionRepository;
  readonly settings: CellSettingRepository;

  constructor(
    readonly name: string,
    readonly dataSource: DataSource,
  ) {
    this.tokens = new ConsoleAuthTokenRepository(name, dataSource);
    this.sessions = new ConsoleSessionRepository(name, dataSource);
    this.settings = new CellSettingRepository(name, dataSource);
  }
}
