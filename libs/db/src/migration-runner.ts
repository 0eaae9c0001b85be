import { Client } from 'pg';
import { Logger } from '@nestjs/common';
import { DataSource, MigrationExecutor, QueryRunner } from 'typeorm';
import { adoptCellTokens, KEYHOLE_SCHEMA, NOVA_EXPIRES_INDEX_SQL, prepareCellSchema, TokenAdoption } from './cell/cell-schema';

// Any fixed 64-bit key works; it only has to differ from the purge leader lock.
const MIGRATION_LOCK_KEY = 0x6b68_6d69_6772; // "khmigr"

/** What a cell database's migration run does around the migrations themselves. */
export interface MigrationRunOptions {
  /**
   * The schema that holds every table of the run, the migrations table included. The run creates
   * it, sets the transaction's search_path to it (the migrations name tables unqualified), and
   * calls `before` and `after` inside the same transaction. Absent: the database's default schema.
   */
  schema?: string;
  /** Runs first (e.g. moves the tables of an older layout into `schema`). */
  before?: (queryRunner: QueryRunner) => Promise<unknown>;
  /** Runs after the pending migrations (e.g. adopts rows into another table). */
  after?: (queryRunner: QueryRunner) => Promise<unknown>;
}

/**
 * Brings one database to the latest schema. Several processes may start at once (replicas, CLI),
 * so the run holds a session advisory lock. The whole run is ONE transaction: the schema, the
 * migrations table (which TypeORM would otherwise create outside any transaction), every pending
 * migration and the `before`/`after` steps commit together or not at all, so a failed run leaves
 * the database exactly as it found it.
 * A DataSource that is not initialized is opened for the run and destroyed after it (the apps
 * reach their tables through their own pools and keep no DataSource open).
 * Returns the names of the migrations that ran.
 */
export async function migrateDatabase(dataSource: DataSource, options: MigrationRunOptions = {}): Promise<string[]> {
  const openedHere = !dataSource.isInitialized;
  if (openedHere) {
    await dataSource.initialize();
  }
  // The lock lives on its own connection so that a pool of one can still run the migrations. It has
  // the run's deadlines: waiting for another run's lock is bounded like a statement.
  const extra = dataSource.options.extra as { query_timeout?: number; connectionTimeoutMillis?: number } | undefined;
  const lock = new Client({
    connectionString: (dataSource.options as { url: string }).url,
    connectionTimeoutMillis: extra?.connectionTimeoutMillis,
    query_timeout: extra?.query_timeout,
  });
  const queryRunner = dataSource.createQueryRunner();
  try {
    await lock.connect();
    await lock.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
    await queryRunner.startTransaction();
    try {
      const applied = await migrateInTransaction(dataSource, queryRunner, options);
      await queryRunner.commitTransaction();
      return applied;
    } catch (error) {
      if (queryRunner.isTransactionActive) {
        await queryRunner.rollbackTransaction().catch(() => undefined);
      }
      throw error;
    }
  } finally {
    await queryRunner.release();
    // Ending the session releases the lock even if the unlock is never sent.
    await lock.end();
    if (openedHere) {
      await dataSource.destroy();
    }
  }
}

async function migrateInTransaction(dataSource: DataSource, queryRunner: QueryRunner, options: MigrationRunOptions): Promise<string[]> {
  const { schema } = options;
  if (schema !== undefined) {
    if (!/^[a-z_][a-z0-9_]*$/.test(schema)) {
      throw new Error('unsupported schema name');
    }
    await queryRunner.query(`CREATE SCHEMA IF NOT EXISTS ${schema}`);
  }
  await options.before?.(queryRunner);
  if (schema !== undefined) {
    // LOCAL: ends with the transaction, so the pooled connection does not keep it.
    await queryRunner.query(`SET LOCAL search_path = ${schema}`);
  }
  // On the run's own query runner, inside its transaction: TypeORM starts none of its own then,
  // and creates its migrations table (in the search_path's schema) inside this one.
  const executor = new MigrationExecutor(dataSource, queryRunner);
  executor.transaction = 'all';
  const applied = await executor.executePendingMigrations();
  await options.after?.(queryRunner);
  return applied.map((migration) => migration.name);
}

/**
 * Creates the database named in `url` when it does not exist, connecting to the server's
 * `postgres` database. Used by the local deployment and the tests, never by the production path.
 */
export async function createDatabaseIfMissing(url: string, template?: string): Promise<boolean> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.replace(/^\//, ''));
  if (!/^[A-Za-z0-9_-]{1,63}$/.test(name)) {
    throw new Error(`unsupported database name in URL`);
  }
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = adminClient(admin);
  await client.connect();
  try {
    const existing = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (existing.rowCount) {
      return false;
    }
    const templateClause = template ? ` TEMPLATE "${template.replace(/"/g, '')}"` : '';
    await client.query(`CREATE DATABASE "${name}"${templateClause}`);
    return true;
  } finally {
    await client.end();
  }
}

/** Drops the database named in `url` (tests only), ending its connections first. */
export async function dropDatabase(url: string): Promise<void> {
  const target = new URL(url);
  const name = decodeURIComponent(target.pathname.replace(/^\//, ''));
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = adminClient(admin);
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS "${name.replace(/"/g, '')}" WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

// CREATE DATABASE copies a template: seconds on a busy server, never minutes.
const ADMIN_CONNECT_TIMEOUT_MS = 10_000;
const ADMIN_QUERY_TIMEOUT_MS = 120_000;

/** A client on the server's `postgres` database, with deadlines: a server that does not answer fails the call. */
function adminClient(admin: URL): Client {
  return new Client({
    connectionString: admin.toString(),
    connectionTimeoutMillis: ADMIN_CONNECT_TIMEOUT_MS,
    query_timeout: ADMIN_QUERY_TIMEOUT_MS,
  });
}

const logger = new Logger('CellMigrations');

/** What a cell database's migration run did. */
export interface CellMigration {
  /** The names of the migrations that ran. */
  applied: string[];
  /** Tables of an older keyhole moved from `public` into the `keyhole` schema. */
  movedTables: string[];
  /** What adopting keyhole's own tokens into Nova's table did; null when the cell has no Nova table. */
  adoption: TokenAdoption | null;
}

/**
 * Brings a cell database to the latest schema: keyhole's tables in the `keyhole` schema (an older
 * keyhole's tables moved there from `public` first), then, when Nova's `console_auth_tokens`
 * exists, the valid rows of keyhole's own token table adopted into it. All in one transaction
 * (see migrateDatabase and cell-schema.ts).
 */
export async function migrateCellDatabase(dataSource: DataSource, nowSeconds = Math.floor(Date.now() / 1000)): Promise<CellMigration> {
  let movedTables: string[] = [];
  let adoption: TokenAdoption | null = null;
  const applied = await migrateDatabase(dataSource, {
    schema: KEYHOLE_SCHEMA,
    before: async (queryRunner) => {
      movedTables = await prepareCellSchema(queryRunner);
      if (movedTables.length > 0) {
        logger.log({ tables: movedTables }, `moved the tables of an older keyhole from public into the ${KEYHOLE_SCHEMA} schema`);
      }
    },
    after: async (queryRunner) => {
      adoption = await adoptCellTokens(queryRunner, nowSeconds);
      if (adoption && adoption.adopted + adoption.expired > 0) {
        logger.log({ adopted: adoption.adopted, expired: adoption.expired }, "moved keyhole's own tokens into Nova's console_auth_tokens");
      }
      if (adoption?.expiresIndex === 'not owner') {
        logger.warn(
          { statement: NOVA_EXPIRES_INDEX_SQL },
          "keyhole's database role does not own Nova's console_auth_tokens and cannot index it: the purge scans the table " +
            "until Nova's role runs this statement",
        );
      }
    },
  });
  return { applied, movedTables, adoption };
}
