import { DataSource, Repository } from 'typeorm';
import { runPrepared } from '../prepared-statements';
import { keyedLookups, QueryBatcher } from '../query-batcher';
import { CellEntity } from './cell.entity';

const FIND_CELLS_SQL =
  'SELECT name, database_url, proxy_url, access_url_bases, created_at, updated_at FROM cells WHERE name = ANY($1::varchar[])';

export type NewCellRow = Pick<CellEntity, 'name' | 'databaseUrl' | 'proxyUrl' | 'accessUrlBases'>;

/** The `cells` table of the control database. */
export class CellRepository {
  private readonly rows: Repository<CellEntity>;
  // Every token issued and checked reads its cell's row: concurrent reads share one query.
  private readonly lookups: QueryBatcher<string, CellEntity | null>;

  constructor(private readonly dataSource: DataSource) {
    this.rows = dataSource.getRepository(CellEntity);
    this.lookups = keyedLookups(
      async (names) => (await runPrepared<Record<string, unknown>>(this.dataSource, 'keyhole_find_cells', FIND_CELLS_SQL, [names])).map(fromRaw),
      (cell) => cell.name,
      { maxInFlight: 2, maxBatchSize: 256 },
    );
  }

  /** The row as stored now, read after this call was made. */
  findByName(name: string): Promise<CellEntity | null> {
    return this.lookups.call(name);
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

function fromRaw(raw: Record<string, unknown>): CellEntity {
  const entity = new CellEntity();
  entity.name = raw.name as string;
  entity.databaseUrl = raw.database_url as string;
  entity.proxyUrl = raw.proxy_url as string;
  entity.accessUrlBases = raw.access_url_bases as Record<string, string>;
  entity.createdAt = raw.created_at as Date;
  entity.updatedAt = raw.updated_at as Date;
  return entity;
}
