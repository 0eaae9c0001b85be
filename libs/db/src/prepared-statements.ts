import type { Pool, QueryResultRow } from 'pg';
import type { DataSource } from 'typeorm';

/**
 * Runs a named prepared statement on the DataSource's own pg pool (same connections, settings and
 * statement timeout): PostgreSQL parses and plans it once per connection instead of once per
 * call, and TypeORM's per-query work is skipped. For the few statements the console proxy runs on
 * every connect; everything else goes through TypeORM. Select explicit columns, never `*`: a
 * prepared statement whose result type changes (a column added by a migration while proxies run)
 * fails until its connection is replaced.
 */
export async function runPrepared<Row extends QueryResultRow>(dataSource: DataSource, name: string, text: string, values: unknown[]): Promise<Row[]> {
  const pool = (dataSource.driver as unknown as { master: Pool }).master;
  const result = await pool.query<Row>({ name, text, values });
  return result.rows;
}
