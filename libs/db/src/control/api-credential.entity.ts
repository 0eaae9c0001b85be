import { Column, Entity, PrimaryColumn } from 'typeorm';
import { RowMapper } from '../row-mapper';

export type CredentialRole = 'agent' | 'operator';

/** A long-lived API key of a compute agent or an operator. Only the argon2id hash of its secret. */
@Entity({ name: 'api_credentials' })
export class ApiCredentialEntity {
  /** The public part of the key, used to find the row. */
  @PrimaryColumn({ type: 'varchar', length: 32 })
  id!: string;

  @Column({ type: 'varchar', length: 128 })
  name!: string;

  @Column({ type: 'varchar', length: 16 })
  role!: CredentialRole;

  /** The only cell this key may act on; null for an operator of every cell. */
  @Column({ name: 'cell_name', type: 'varchar', length: 63, nullable: true })
  cellName!: string | null;

  @Column({ name: 'secret_hash', type: 'text' })
  secretHash!: string;

  @Column({ name: 'created_at', type: 'timestamptz', insert: false, update: false })
  createdAt!: Date;

  @Column({ name: 'last_used_at', type: 'timestamptz', nullable: true })
  lastUsedAt!: Date | null;

  @Column({ name: 'revoked_at', type: 'timestamptz', nullable: true })
  revokedAt!: Date | null;
}

/** How keyhole's SQL statements read `api_credentials` rows. */
export const apiCredentialRows = new RowMapper(ApiCredentialEntity, {
  id: { column: 'id' },
  name: { column: 'name' },
  role: { column: 'role' },
  cellName: { column: 'cell_name' },
  secretHash: { column: 'secret_hash' },
  createdAt: { column: 'created_at' },
  lastUsedAt: { column: 'last_used_at' },
  revokedAt: { column: 'revoked_at' },
});
