import { Column, Entity } from 'typeorm';
import { bigintAsNumber, int8AsNumber } from '../column-transformers';
import { RowMapper } from '../row-mapper';

/** One change of a cell setting; the newest row of a name is the current value. */
@Entity({ name: 'cell_settings' })
export class CellSettingEntity {
  @Column({ type: 'bigint', primary: true, generated: 'increment', transformer: bigintAsNumber })
  id!: number;

  @Column({ type: 'varchar', length: 64 })
  name!: string;

  @Column({ type: 'jsonb' })
  value!: unknown;

  @Column({ name: 'changed_by', type: 'varchar', length: 128 })
  changedBy!: string;

  @Column({ name: 'changed_at', type: 'timestamptz', insert: false, update: false })
  changedAt!: Date;
}

/** How keyhole's SQL statements read `cell_settings` rows. */
export const cellSettingRows = new RowMapper(CellSettingEntity, {
  id: { column: 'id', read: int8AsNumber },
  name: { column: 'name' },
  value: { column: 'value' },
  changedBy: { column: 'changed_by' },
  changedAt: { column: 'changed_at' },
});
