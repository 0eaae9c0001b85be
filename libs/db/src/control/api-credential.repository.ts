import { DataSource, IsNull, Repository } from 'typeorm';
import { ApiCredentialEntity } from './api-credential.entity';

export type NewApiCredentialRow = Pick<ApiCredentialEntity, 'id' | 'name' | 'role' | 'cellName' | 'secretHash'>;

/** The `api_credentials` table of the control database. */
export class ApiCredentialRepository {
  private readonly rows: Repository<ApiCredentialEntity>;

  constructor(dataSource: DataSource) {
    this.rows = dataSource.getRepository(ApiCredentialEntity);
  }

  async insert(row: NewApiCredentialRow): Promise<ApiCredentialEntity> {
    await this.rows.insert(row);
    return (await this.findById(row.id)) as ApiCredentialEntity;
  }

  findById(id: string): Promise<ApiCredentialEntity | null> {
    return this.rows.findOneBy({ id });
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
