import { DataSource, Repository } from 'typeorm';
import { CellEntity } from './cell.entity';

export type NewCellRow = Pick<CellEntity, 'name' | 'databaseUrl' | 'proxyUrl' | 'accessUrlBases'>;

/** The `cells` table of the control database. */
export class CellRepository {
  private readonly rows: Repository<CellEntity>;

  constructor(dataSource: DataSource) {
    this.rows = dataSource.getRepository(CellEntity);
  }

  findByName(name: string): Promise<CellEntity | null> {
    return this.rows.findOneBy({ name });
  }

  listAll(): Promise<CellEntity[]> {
    return this.rows.find({ order: { name: 'ASC' } });
  }

  async insert(row: NewCellRow): Promise<CellEntity> {
    await this.rows.insert(row);
    return (await this.findByName(row.name)) as CellEntity;
  }

  /** Changes where a cell's database or proxy is. */
  async updateEndpoints(name: string, changes: Partial<Pick<CellEntity, 'databaseUrl' | 'proxyUrl'>>): Promise<void> {
    await this.rows
      .createQueryBuilder()
      .update()
      .set({ ...changes, updatedAt: () => 'now()' })
      .where('name = :name', { name })
      .execute();
  }

  /** Returns whether the cell existed. */
  async deleteByName(name: string): Promise<boolean> {
    const result = await this.rows.delete({ name });
    return (result.affected ?? 0) > 0;
  }
}
