import type { Pool } from 'pg';
import { runCounted, runPrepared } from '../database-pool';
import { keyedLookups, QueryBatcher } from '../query-batcher';
import { ApiCredentialEntity, apiCredentialRows } from './api-credential.entity';

const FIND_CREDENTIALS_SQL = `SELECT ${apiCredentialRows.selectList()} FROM api_credentials WHERE id = ANY($1::varchar[])`;

export type NewApiCredentialRow = Pick<ApiCredentialEntity, 'id' | 'name' | 'role' | 'cellName' | 'secretHash'>;

/** The `api_credentials` table of the control database. */
export class ApiCredentialRepository {
  // Every API request reads its key's row: concurrent reads share one query.
  private readonly lookups: QueryBatcher<string, ApiCredentialEntity | null>;

  constructor(private readonly pool: Pool) {
    this.lookups = keyedLookups(
      async (ids) =>
        (await runPrepared<Record<string, unknown>>(this.pool, 'keyhole_find_credentials', FIND_CREDENTIALS_SQL, [ids])).map((row) =>
          apiCredentialRows.fromRow(row),
        ),
      (credential) => credential.id,
      { maxInFlight: 2, maxBatchSize: 256 },
    );
  }

  async insert(row: NewApiCredentialRow): Promise<ApiCredentialEntity> {
    await this.pool.query('INSERT INTO api_credentials (id, name, role, cell_name, secret_hash) VALUES ($1, $2, $3, $4, $5)', [
      row.id,
      row.name,
      row.role,
      row.cellName,
      row.secretHash,
    ]);
    return (await this.findById(row.id)) as ApiCredentialEntity;
  }

  /** The row as stored now (revoked or not), read after this call was made. */
  findById(id: string): Promise<ApiCredentialEntity | null> {
    return this.lookups.call(id);
  }

  async listAll(includeRevoked: boolean): Promise<ApiCredentialEntity[]> {
    const { rows } = await this.pool.query<Record<string, unknown>>(
      `SELECT ${apiCredentialRows.selectList()} FROM api_credentials ${includeRevoked ? '' : 'WHERE revoked_at IS NULL'} ORDER BY created_at ASC, id ASC`,
    );
    return rows.map((row) => apiCredentialRows.fromRow(row));
  }

  /** Marks the credential revoked now; returns false when it does not exist or was revoked. */
  async markRevoked(id: string): Promise<boolean> {
    return (await runCounted(this.pool, 'UPDATE api_credentials SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL', [id])) > 0;
  }

  async touchLastUsed(id: string): Promise<void> {
    await this.pool.query('UPDATE api_credentials SET last_used_at = now() WHERE id = $1', [id]);
  }
}
