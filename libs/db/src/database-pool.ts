import { Logger } from '@nestjs/common';
import { Pool, PoolClient, QueryResultRow, types } from 'pg';
import type { KeyholeConfig } from '@keyhole/config';
import { CELL_CONNECTION_OPTIONS } from './cell/cell-schema';
import { DeadlineStage, deadlineStage, isConnectionBroken } from './postgres-errors';

// Nova's created_at/updated_at are `timestamp without time zone` holding UTC. pg would read them
// in the process's local zone; read them as UTC whatever TZ the process runs in.
types.setTypeParser(types.builtins.TIMESTAMP, (value: string) => new Date(`${value.replace(' ', 'T')}Z`));

export interface DatabaseSettings {
  url: string;
  /** Connections in this pool. */
  poolSize: number;
  /** Client-side deadline for opening a connection and for waiting for a pooled one, ms. */
  connectTimeoutMs: number;
  /**
   * Client-side deadline for each statement's answer, ms: the only bound when the server stops
   * answering without closing the connection (frozen, partitioned), since statement_timeout is
   * enforced by the party that is stuck. The connection of a statement past it is destroyed.
   */
  queryTimeoutMs: number;
  /** Server-side `statement_timeout`, ms; at most `queryTimeoutMs`. */
  statementTimeoutMs: number;
  /** Shown in pg_stat_activity, e.g. `keyhole-api` or `keyhole-proxy:cell1`. */
  applicationName: string;
  /**
   * libpq startup options of each connection: CELL_CONNECTION_OPTIONS for a cell database (its
   * search_path finds keyhole's tables in the `keyhole` schema). Absent: the server's defaults.
   */
  connectionOptions?: string;
  /** Called when an operation of this pool missed a client-side deadline (for a metric). */
  onDeadlineExceeded?: (stage: DeadlineStage) => void;
}

/** The settings of an app's pool on the database at `url`, from the configuration. */
export function databaseSettings(config: KeyholeConfig, url: string, applicationName: string): DatabaseSettings {
  return {
    url,
    poolSize: config.database.poolSize,
    connectTimeoutMs: config.database.connectTimeoutMs,
    queryTimeoutMs: config.database.queryTimeoutMs,
    statementTimeoutMs: config.database.statementTimeoutMs,
    applicationName,
  };
}

/** The settings of an app's pool on the cell database at `url`: databaseSettings with the cell's search_path. */
export function cellDatabaseSettings(config: KeyholeConfig, url: string, applicationName: string): DatabaseSettings {
  return { ...databaseSettings(config, url, applicationName), connectionOptions: CELL_CONNECTION_OPTIONS };
}

/**
 * The settings of a migration run on the database at `url`: one connection, and deadlines long
 * enough for DDL on large tables (KEYHOLE_DB_MIGRATION_TIMEOUT_MS). The client's deadline leaves
 * the server's statement_timeout the time to answer first.
 */
export function migrationSettings(config: KeyholeConfig, url: string, applicationName: string): DatabaseSettings {
  return {
    ...databaseSettings(config, url, applicationName),
    poolSize: 1,
    statementTimeoutMs: config.database.migrationTimeoutMs,
    queryTimeoutMs: config.database.migrationTimeoutMs + config.database.queryTimeoutMs,
  };
}

const logger = new Logger('DatabasePool');

/**
 * The pg pool through which an app reaches every table of one database. keyhole owns it (rather
 * than borrowing TypeORM's) so that the hot path can run named prepared statements without
 * reaching into a library's private fields; TypeORM only runs the migrations. Not connected
 * until its first query; `end()` it on shutdown.
 *
 * Every operation has a client-side deadline. Waiting for a connection (pooled or new) ends after
 * `connectTimeoutMs` with "timeout exceeded when trying to connect" or "Connection terminated due
 * to connection timeout" (pg-pool destroys a connection that did not open in time). A statement
 * ends after `queryTimeoutMs` with "Query read timeout" (pg's query_timeout): pg leaves that
 * connection with its statement outstanding, and the pool destroys it when it comes back with the
 * error (pg-pool removes a client released with an error; pg's end() destroys the socket of a
 * client whose query is still active), so a stuck connection never serves again. Code that holds a
 * client itself (`pool.connect()`) must release it with the error the same way: see `inTransaction`.
 */
export function createPool(settings: DatabaseSettings): Pool {
  const pool = new Pool({
    connectionString: settings.url,
    max: settings.poolSize,
    connectionTimeoutMillis: settings.connectTimeoutMs,
    query_timeout: settings.queryTimeoutMs,
    statement_timeout: settings.statementTimeoutMs,
    application_name: settings.applicationName,
    ...(settings.connectionOptions !== undefined ? { options: settings.connectionOptions } : {}),
    // An idle connection to a frozen server is half-closed by end() and would keep a CLI process
    // from exiting until the server answers: idle connections do not hold the process open.
    allowExitOnIdle: true,
  });
  // An idle connection that the server drops emits `error` on the pool: without a listener that
  // would end the process. The pool replaces the connection by itself.
  // pg-pool attaches the whole client to that error: log what happened, not the client.
  pool.on('error', (error: Error & { code?: string }) =>
    logger.warn({ error: error.message, code: error.code, application: settings.applicationName }, 'an idle database connection failed'),
  );
  const { onDeadlineExceeded } = settings;
  if (onDeadlineExceeded) {
    observeDeadlines(pool, onDeadlineExceeded);
  }
  return pool;
}

/**
 * Reports each missed deadline of `pool`: a statement's (its connection comes back to the pool
 * with the error) and a connection's (`connect`, which `pool.query` also goes through, fails).
 */
function observeDeadlines(pool: Pool, report: (stage: DeadlineStage) => void): void {
  pool.on('release', (error: Error | undefined) => {
    if (deadlineStage(error) === 'query') {
      report('query');
    }
  });
  type ConnectCallback = (error: Error | undefined, client: PoolClient | undefined, done: (release?: unknown) => void) => void;
  const connect = pool.connect.bind(pool) as (callback: ConnectCallback) => void;
  const observed = (callback?: ConnectCallback): Promise<PoolClient> | void => {
    const checked = (resolve: ConnectCallback): void =>
      connect((error, client, done) => {
        if (deadlineStage(error) === 'connect') {
          report('connect');
        }
        resolve(error, client, done);
      });
    if (callback) {
      return checked(callback);
    }
    return new Promise<PoolClient>((resolve, reject) => checked((error, client) => (error ? reject(error) : resolve(client!))));
  };
  pool.connect = observed as Pool['connect'];
}

/**
 * Runs a named prepared statement: PostgreSQL parses and plans it once per connection instead of
 * once per call. For the statements that run on every console connect or API request. Select
 * explicit columns, never `*`: a prepared statement whose result type changes (a column added by
 * a migration while proxies run) fails until its connection is replaced.
 */
export async function runPrepared<Row extends QueryResultRow>(
  database: Pool | PoolClient,
  name: string,
  text: string,
  values: unknown[],
): Promise<Row[]> {
  const result = await database.query<Row>({ name, text, values });
  return result.rows;
}

/** Rows a statement changed (pg answers null for statements that have no count). */
export async function runCounted(database: Pool | PoolClient, text: string, values: unknown[]): Promise<number> {
  return (await database.query(text, values)).rowCount ?? 0;
}

/**
 * Runs `work` in one transaction on one pooled connection: committed when it resolves, rolled
 * back when it throws. A connection that failed (a missed deadline, a lost server) is not asked
 * to roll back, which would wait out a second deadline: it is destroyed, and the server rolls back
 * the transaction of a connection that closes. A connection whose rollback failed is discarded
 * too, never returned to the pool in an unknown state.
 */
export async function inTransaction<T>(pool: Pool, work: (client: PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    const result = await work(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    if (isConnectionBroken(error)) {
      broken = error instanceof Error ? error : new Error('connection broken');
    } else {
      await client.query('ROLLBACK').catch((rollbackError: unknown) => {
        broken = rollbackError instanceof Error ? rollbackError : new Error('rollback failed');
      });
    }
    throw error;
  } finally {
    client.release(broken);
  }
}
