import { Injectable, Logger } from '@nestjs/common';
import { ConsoleType, KeyholeError } from '@keyhole/core';
import { CellEntity, CellMigration, ControlDatabase, inTransaction, postgresErrorCode, runCounted, UNIQUE_VIOLATION } from '@keyhole/db';
import { CellDatabases } from './cell-databases';
import { cellNotFound } from './cells.errors';

export interface RegisterCellInput {
  name: string;
  databaseUrl: string;
  proxyUrl: string;
  accessUrlBases?: Partial<Record<ConsoleType, string>>;
}

/** What the API and CLI show of a cell: never its database URL, which may hold a password. */
export interface CellView {
  name: string;
  proxyUrl: string;
  accessUrlBases: Record<ConsoleType, string>;
  createdAt: string;
  updatedAt: string;
}

/**
 * Default access URL bases, relative to the cell's proxy URL: the pages the keyhole proxy serves.
 * noVNC's lite page takes the websocket path from `?path=`; the serial and SPICE pages take `?token=`.
 */
const DEFAULT_CLIENT_PAGES: Record<ConsoleType, string> = {
  novnc: 'vnc_lite.html',
  'spice-html5': 'spice_auto.html',
  serial: 'serial.html',
};

/** The cells registry of the control database, and the schema of every cell database. */
@Injectable()
export class CellsService {
  private readonly logger = new Logger(CellsService.name);

  constructor(
    private readonly control: ControlDatabase,
    private readonly databases: CellDatabases,
  ) {}

  /**
   * Registers a cell: connects to its database and migrates it first, so a registered cell is
   * always usable; then records it. Nothing is recorded when the database cannot be reached.
   */
  async register(input: RegisterCellInput): Promise<CellView> {
    if (await this.control.cells.findByName(input.name)) {
      throw cellExists(input.name);
    }
    await this.migrateUrl(input.name, input.databaseUrl);
    try {
      const row = await this.control.cells.insert({
        name: input.name,
        databaseUrl: input.databaseUrl,
        proxyUrl: input.proxyUrl,
        accessUrlBases: input.accessUrlBases ?? {},
      });
      return toView(row);
    } catch (error) {
      if (postgresErrorCode(error) === UNIQUE_VIOLATION) {
        throw cellExists(input.name);
      }
      throw error;
    }
  }

  /**
   * Points a cell at another database URL (moved server, new password); the new database is
   * migrated first and the old pool closed after.
   */
  async updateDatabaseUrl(name: string, databaseUrl: string): Promise<void> {
    await this.getRow(name);
    await this.migrateUrl(name, databaseUrl);
    await this.control.cells.updateEndpoints(name, { databaseUrl });
    await this.databases.close(name);
  }

  /** Moves a cell's proxy: tokens issued from now on point at the new URL (existing ones keep theirs). */
  async updateProxyUrl(name: string, proxyUrl: string): Promise<void> {
    await this.getRow(name);
    await this.control.cells.updateEndpoints(name, { proxyUrl });
  }

  async list(): Promise<CellView[]> {
    return (await this.control.cells.listAll()).map(toView);
  }

  async get(name: string): Promise<CellView> {
    return toView(await this.getRow(name));
  }

  /** The access URL base of a console type in a cell (stored in each token row, as Nova does). */
  async accessUrlBase(name: string, consoleType: ConsoleType): Promise<string> {
    return toView(await this.getRow(name)).accessUrlBases[consoleType];
  }

  /**
   * Removes a cell from the registry and revokes the credentials scoped to it, in one transaction.
   * The cell database itself is left untouched.
   */
  async remove(name: string): Promise<{ revokedCredentials: number }> {
    const revokedCredentials = await inTransaction(this.control.pool, async (client) => {
      const deleted = await runCounted(client, 'DELETE FROM cells WHERE name = $1', [name]);
      if (deleted === 0) {
        throw cellNotFound(name);
      }
      return runCounted(client, 'UPDATE api_credentials SET revoked_at = now() WHERE cell_name = $1 AND revoked_at IS NULL', [name]);
    });
    await this.databases.close(name);
    return { revokedCredentials };
  }

  /** Migrates every registered cell database; returns what each run did, per cell. */
  async migrateAll(): Promise<Record<string, CellMigration>> {
    const applied: Record<string, CellMigration> = {};
    for (const cell of await this.control.cells.listAll()) {
      applied[cell.name] = await this.databases.migrate(cell.name, cell.databaseUrl);
    }
    return applied;
  }

  private async migrateUrl(name: string, databaseUrl: string): Promise<void> {
    const { applied, adoption } = await this.databases.migrate(name, databaseUrl);
    this.logger.log({ cell: name, migrations: applied, adoptedTokens: adoption?.adopted ?? 0 }, 'cell database migrated');
  }

  private async getRow(name: string): Promise<CellEntity> {
    const row = await this.control.cells.findByName(name);
    if (!row) {
      throw cellNotFound(name);
    }
    return row;
  }
}

function cellExists(name: string): KeyholeError {
  return new KeyholeError('CELL_EXISTS', `Cell '${name}' is already registered`, { details: { cell: name } });
}

function toView(row: CellEntity): CellView {
  const proxyUrl = row.proxyUrl.replace(/\/+$/, '');
  const accessUrlBases = {} as Record<ConsoleType, string>;
  for (const [type, page] of Object.entries(DEFAULT_CLIENT_PAGES) as [ConsoleType, string][]) {
    accessUrlBases[type] = row.accessUrlBases[type] ?? `${proxyUrl}/${page}`;
  }
  return {
    name: row.name,
    proxyUrl,
    accessUrlBases,
    createdAt: row.createdAt.toISOString(),
    updatedAt: row.updatedAt.toISOString(),
  };
}
