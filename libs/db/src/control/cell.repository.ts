import type { Pool } from 'pg';
import { runCounted, runPrepared } from '../database-pool';
import { keyedLookups, QueryBatcher } from '../query-batcher';
import { CellEntity, cellRows } from './cell.entity';

const FIND_CELLS_SQL = `SELECT ${cellRows.selectList()} FROM cells WHERE name = ANY($1::varchar[])`;

export type NewCellRow = Pick<CellEntity, 'name' | 'databaseUrl' | 'proxyUrl' | 'accessUrlBases'>;

/** The `cells` table of the control database. */
export class CellRepository {
  // Every token issued and checked reads its cell's row: concurrent reads share one query.
  private readonly lookups: QueryBatcher<string, CellEntity | null>;

  constructor(private readonly pool: Pool) {
    this.lookups = keyedLookups(
      async (names) =>
        (await runPrepared<Record<string, unknown>>(this.pool, 'keyhole_find_cells', FIND_CELLS_SQL, [names])).map((row) =>
          cellRows.fromRow(row),
        ),
      (cell) => cell.name,
      { maxInFlight: 2, maxBatchSize: 256 },
    );
  }

  /** The row as stored now, read after this call was made. */
  findByName(name: string): Promise<CellEntity | null> {
    return this.lookups.call(name);
  }

  async listAll(): Promise<CellEntity[]> {
    const { rows } = await this.pool.query<Record<string, unknown>>(`SELECT ${cellRows.selectList()} FROM cells ORDER BY name ASC`);
    return rows.map((row) => cellRows.fromRow(row));
  }

  async insert(row: NewCellRow): Promise<CellEntity> {
    // pg would send an object as text: jsonb wants JSON.
    await this.pool.query('INSERT INTO cells (name, database_url, proxy_url, access_url_bases) VALUES ($1, $2, $3, $4::jsonb)', [
      row.name,
      row.databaseUrl,
      row.proxyUrl,
      JSON.stringify(row.accessUrlBases),
    ]);
    return (await this.findByName(row.name)) as CellEntity;
  }

  /** Changes where a cell's database or proxy is. */
  async updateEndpoints(name: string, changes: Partial<Pick<CellEntity, 'databaseUrl' | 'proxyUrl'>>): Promise<void> {
    const parameters: unknown[] = [name];
    const assignments = ['updated_at = now()'];
    if (changes.databaseUrl !== undefined) {
      assignments.push(`database_url = $${parameters.push(changes.databaseUrl)}`);
    }
    if (changes.proxyUrl !== undefined) {
      assignments.push(`proxy_url = $${parameters.push(changes.proxyUrl)}`);
    }
    await this.pool.query(`UPDATE cells SET ${assignments.join(', ')} WHERE name = $1`, parameters);
  }

  /** Returns whether the cell existed. */
  async deleteByName(name: string): Promise<boolean> {
    return (await runCounted(this.pool, 'DELETE FROM cells WHERE name = $1', [name])) > 0;
  }
}
