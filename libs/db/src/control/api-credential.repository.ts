import { DataSource, IsNull, Repository } from 'typeorm';
import { runPrepared } from '../prepared-statements';
import { keyedLookups, QueryBatcher } from '../query-batcher';
import { ApiCredentialEntity } from './api-credential.entity';

const FIND_CREDENTIALS_SQL =
  'SELECT id, name, role, cell_name, secret_hash, created_at, last_used_at, revoked_at FROM api_credentials WHERE id = ANY($1::varchar[])';

export type NewApiCredentialRow = Pick<ApiCredentialEntity, 'id' | 'name' | 'role' | 'cellName' | 'secretHash'>;

/** The `api_credentials` table of the control database. */
export class ApiCredentialRepository {
  private readonly rows: Repository<ApiCredentialEntity>;
  // Every API request reads its key's row: concurrent reads share one query.
  private readonly lookups: QueryBatcher<string, ApiCredentialEntity | null>;

  constructor(private readonly dataSource: DataSource) {
    this.rows = dataSource.getRepository(ApiCredentialEntity);
    this.lookups = keyedLookups(
      async (ids) => (await runPrepared<Record<string, unknown>>(this.dataSource, 'keyhole_find_credentials', FIND_CREDENTIALS_SQL, [ids])).map(fromRaw),
      (credential) => credential.id,
      { maxInFlight: 2, maxBatchSize: 256 },
    );
  }

  async insert(row: NewApiCredentialRow): Promise<ApiCredentialEntity> {
    await this.rows.insert(row);
    return (await this.findById(row.id)) as ApiCredentialEntity;
  }

  /** The row as stored now (revoked or not), read after this call was made. */
  findById(id: string): Promise<ApiCredentialEntity | null> {
    return this.lookups.call(id);
  }

  listAll(includeRevoked: boolean): Promise<ApiCredentialEntity[]> {
    return this.rows.find({
      where: includeRevoked ? {} : { revokedAt: IsNull() },
      order: { createdAt: 'ASC', id: 'ASC' },
    });
  }

  /** Marks the credential revoked now; returns false when it does not exist or was revoked. */
  async markRevoked(id: string): Promise<boolean> {
    const result = await this.rows
      .createQueryBuilder()
      .update()
      .set({ revokedAt: () => 'now()' })
      .where('id = :id AND revoked_at IS NULL', { id })
      .execute();
    return (result.affected ?? 0) > 0;
  }

  async touchLastUsed(id: string): Promise<void> {
    await this.rows
      .createQueryBuilder()
      .update()
      .set({ lastUsedAt: () => 'now()' })
      .where('id = :id', { id })
      .execute();
  }
}

function fromRaw(raw: Record<string, unknown>): ApiCredentialEntity {
  const entity = new ApiCredentialEntity();
  entity.id = raw.id as string;
  entity.name = raw.name as string;
  entity.role = raw.role as ApiCredentialEntity['role'];
  entity.cellName = (raw.cell_name as string | null) ?? null;
  entity.secretHash = raw.secret_hash as string;
  entity.createdAt = raw.created_at as Date;
  entity.lastUsedAt = (raw.last_used_at as Date | null) ?? null;
  entity.revokedAt = (raw.revoked_at as Date | null) ?? null;
  return entity;
}
