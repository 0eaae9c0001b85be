import { Column, Entity, PrimaryColumn } from 'typeorm';
import { RowMapper } from '../row-mapper';

/** A registered cell: where its database is and where its console proxy is reached. */
@Entity({ name: 'cells' })
export class CellEntity {
  @PrimaryColumn({ type: 'varchar', length: 63 })
  name!: string;

  /** May hold a password: never returned by the API or logged unredacted. */
  @Column({ name: 'database_url', type: 'text' })
  databaseUrl!: string;

  /** Public base URL of the cell's console proxy, e.g. `https://console.cell1.example.com`. */
  @Column({ name: 'proxy_url', type: 'varchar', length: 255 })
  proxyUrl!: string;

  /** Per console type overrides of the access URL base; keys are console types. */
  @Column({ name: 'access_url_bases', type: 'jsonb', default: () => `'{}'::jsonb` })
  accessUrlBases!: Record<string, string>;

  @Column({ name: 'created_at', type: 'timestamptz', insert: false, update: false })
  createdAt!: Date;

  @Column({ name: 'updated_at', type: 'timestamptz', insert: false })
  updatedAt!: Date;
}

/** How keyhole's SQL statements read `cells` rows. */
export const cellRows = new RowMapper(CellEntity, {
  name: { column: 'name' },
  databaseUrl: { column: 'database_url' },
  proxyUrl: { column: 'proxy_url' },
  accessUrlBases: { column: 'access_url_bases' },
  createdAt: { column: 'created_at' },
  updatedAt: { column: 'updated_at' },
});
