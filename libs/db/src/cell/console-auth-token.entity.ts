import { Column, Entity } from 'typeorm';
import { bigintAsNumber, int8AsNumber } from '../column-transformers';
import { RowMapper } from '../row-mapper';

/**
 * A row of Nova's `console_auth_tokens` cell table plus keyhole's own columns. The plaintext token
 * is never stored: `tokenHash` is sha256(token) in lowercase hex.
 */
@Entity({ name: 'console_auth_tokens' })
export class ConsoleAuthTokenEntity {
  @Column({ type: 'bigint', primary: true, generated: 'increment', transformer: bigintAsNumber })
  id!: number;

  @Column({ name: 'token_hash', type: 'varchar', length: 255 })
  tokenHash!: string;

  @Column({ name: 'console_type', type: 'varchar', length: 255 })
  consoleType!: string;

  @Column({ type: 'varchar', length: 255 })
  host!: string;

  @Column({ type: 'integer' })
  port!: number;

  @Column({ name: 'tls_port', type: 'integer', nullable: true })
  tlsPort!: number | null;

  @Column({ name: 'internal_access_path', type: 'text', nullable: true })
  internalAccessPath!: string | null;

  @Column({ name: 'instance_uuid', type: 'varchar', length: 36 })
  instanceUuid!: string;

  /** Unix epoch seconds; the token is valid while `expires > now`. */
  @Column({ type: 'bigint', transformer: bigintAsNumber })
  expires!: number;

  @Column({ name: 'access_url_base', type: 'varchar', length: 255, nullable: true })
  accessUrlBase!: string | null;

  /** UTC, without time zone, as Nova writes it. */
  @Column({ name: 'created_at', type: 'timestamp', nullable: true, insert: false, update: false })
  createdAt!: Date | null;

  @Column({ name: 'updated_at', type: 'timestamp', nullable: true })
  updatedAt!: Date | null;

  /** Optimistic locking: bumped by every keyhole update of the row. */
  @Column({ name: 'row_version', type: 'integer', default: 1 })
  rowVersion!: number;

  /** ConsoleAuthToken object version the row was written at; null when Nova wrote it. */
  @Column({ name: 'object_version', type: 'varchar', length: 16, nullable: true })
  objectVersion!: string | null;

  /** Public id of the API credential that issued the token; null when Nova wrote it. */
  @Column({ name: 'issued_by', type: 'varchar', length: 32, nullable: true })
  issuedBy!: string | null;
}

/** How keyhole's SQL statements read `console_auth_tokens` rows. */
export const consoleAuthTokenRows = new RowMapper(ConsoleAuthTokenEntity, {
  id: { column: 'id', read: int8AsNumber },
  tokenHash: { column: 'token_hash' },
  consoleType: { column: 'console_type' },
  host: { column: 'host' },
  port: { column: 'port' },
  tlsPort: { column: 'tls_port' },
  internalAccessPath: { column: 'internal_access_path' },
  instanceUuid: { column: 'instance_uuid' },
  expires: { column: 'expires', read: int8AsNumber },
  accessUrlBase: { column: 'access_url_base' },
  createdAt: { column: 'created_at' },
  updatedAt: { column: 'updated_at' },
  rowVersion: { column: 'row_version' },
  objectVersion: { column: 'object_version' },
  issuedBy: { column: 'issued_by' },
});
