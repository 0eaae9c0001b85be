import type { Pool } from 'pg';
import { CellSettingEntity, cellSettingRows } from './cell-setting.entity';
import { consoleEventPayloads } from './console-events';
import { notify } from './console-session.repository';
import { inTransaction } from '../database-pool';

/** Names of cell settings. */
export const LEGACY_FALLBACK_SETTING = 'legacy_fallback';

/** `cell_settings` of one cell: append-only; the newest row of a name is its value. */
export class CellSettingRepository {
  constructor(
    readonly cellName: string,
    private readonly pool: Pool,
  ) {}

  /** The newest row of a setting, or null when it was never set. */
  async current(name: string): Promise<CellSettingEntity | null> {
    const [row] = await this.history(name, 1);
    return row ?? null;
  }

  /** The newest changes of a setting, newest first. */
  async history(name: string, limit: number): Promise<CellSettingEntity[]> {
    const { rows } = await this.pool.query<Record<string, unknown>>(
      `SELECT ${cellSettingRows.selectList()} FROM cell_settings WHERE name = $1 ORDER BY id DESC LIMIT $2`,
      [name, limit],
    );
    return rows.map((row) => cellSettingRows.fromRow(row));
  }

  /** Records a new value and tells every proxy of the cell, in one transaction. */
  set(name: string, value: unknown, changedBy: string): Promise<void> {
    return inTransaction(this.pool, async (client) => {
      // pg would send an array as a PostgreSQL array and a string as text: jsonb wants JSON.
      await client.query('INSERT INTO cell_settings (name, value, changed_by) VALUES ($1, $2::jsonb, $3)', [
        name,
        JSON.stringify(value),
        changedBy,
      ]);
      await notify(client, consoleEventPayloads({ kind: 'settings' }));
    });
  }
}
