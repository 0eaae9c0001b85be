import { Logger } from '@nestjs/common';
import { Pool, PoolClient, QueryResultRow, types } from 'pg';

// Nova's created_at/updated_at are `timestamp without time zone` holding UTC. pg would read them
// in the process's local zone; read them as UTC whatever TZ the process runs in.
types.setTypeParser(types.builtins.TIMESTAMP, (value: string) => new Date(`${value.replace(' ', 'T')}Z`));

export interface DatabaseSettings {
  url: string;
  /** Connections in this pool. */
  poolSize: number;
  connectTimeoutMs: number;
  statementTimeoutMs: number;
  /** Shown in pg_stat_activity, e.g. `keyhole-api` or `keyhole-proxy:cell1`. */
  applicationName: string;
}

const logger = new Logger('DatabasePool');

/**
 * The pg pool through which an app reaches every table of one database. keyhole owns it (rather
 * than borrowing TypeORM's) so that the hot path can run named prepared statements without
 * reaching into a library's private fields; TypeORM only runs the migrations. Not connected
 * until its first query; `end()` it on shutdown.
 */
export function createPool(settings: DatabaseSettings): Pool {
  const pool = new Pool({
    connectionString: settings.url,
    max: settings.poolSize,
    // A dead server must not leave a request waiting forever for a pooled connection.
    connectionTimeoutMillis: settings.connectTimeoutMs,
    statement_timeout: settings.statementTimeoutMs,
    application_name: settings.applicationName,
  });
  // An idle connection that the server drops emits `error` on the pool: without a listener that
  // would end the process. The pool replaces the connection by itself.
  pool.on('error', (error) => logger.warn({ err: error, application: settings.applicationName }, 'an idle database connection failed'));
  return pool;
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
 * back when it throws. A connection whose rollback failed is discarded, not returned to the pool
 * in an unknown state.
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
    await client.query('ROLLBACK').catch((rollbackError: unknown) => {
      broken = rollbackError instanceof Error ? rollbackError : new Error('rollback failed');
    });
    throw error;
  } finally {
    client.release(broken);
  }
}
