import { Column, Entity } from 'typeorm';
import { bigintAsNumber } from '../column-transformers';

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
