import { Column, Entity } from 'typeorm';
import { bigintAsNumber, int8AsNumber } from '../column-transformers';
import { RowMapper } from '../row-mapper';

/**
 * A token of a cell: a row of the cell's token table (Nova's `console_auth_tokens`, or keyhole's
 * own with the same columns; see cell-schema.ts) joined with keyhole's extras of that token
 * (`objectVersion`, `issuedBy`, and `tlsPort` when the token table has no such column). The
 * plaintext token is never stored: `tokenHash` is sha256(token) in lowercase hex.
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

  /** The token table's column when it has one (Nova >= 31, keyhole's own), else the extras'. */
  tlsPort!: number | null;

  @Column({ name: 'internal_access_path', type: 'text', nullable: true })
  internalAccessPath!: string | null;

  @Column({ name: 'instance_uuid', type: 'varchar', length: 36 })
  instanceUuid!: string;

  /** Unix epoch seconds; the token is valid while `expires > now`. Nova's column is 32-bit: 2038. */
  @Column({ type: 'bigint', transformer: bigintAsNumber })
  expires!: number;

  @Column({ name: 'access_url_base', type: 'varchar', length: 255, nullable: true })
  accessUrlBase!: string | null;

  /** UTC, without time zone, as Nova writes it. */
  @Column({ name: 'created_at', type: 'timestamp', nullable: true, insert: false, update: false })
  createdAt!: Date | null;

  @Column({ name: 'updated_at', type: 'timestamp', nullable: true })
  updatedAt!: Date | null;

  /** ConsoleAuthToken object version the row was written at (extras); null when Nova wrote it. */
  objectVersion!: string | null;

  /** Public id of the API credential that issued the token (extras); null when Nova wrote it. */
  issuedBy!: string | null;
}

/**
 * How keyhole's SQL statements read tokens: from the token table as `t` LEFT JOINed with the
 * extras as `x`. `hasTlsPort`: whether the token table has a `tls_port` column (its value wins).
 */
export function consoleAuthTokenRows(hasTlsPort: boolean): RowMapper<ConsoleAuthTokenEntity> {
  return hasTlsPort ? TOKEN_ROWS_WITH_TLS_PORT : TOKEN_ROWS;
}

const tokenColumns = (tlsPort: string): ConstructorParameters<typeof RowMapper<ConsoleAuthTokenEntity>>[1] => ({
  id: { column: 't.id', read: int8AsNumber },
  tokenHash: { column: 't.token_hash' },
  consoleType: { column: 't.console_type' },
  host: { column: 't.host' },
  port: { column: 't.port' },
  tlsPort: { column: tlsPort },
  internalAccessPath: { column: 't.internal_access_path' },
  instanceUuid: { column: 't.instance_uuid' },
  expires: { column: 't.expires', read: int8AsNumber },
  accessUrlBase: { column: 't.access_url_base' },
  createdAt: { column: 't.created_at' },
  updatedAt: { column: 't.updated_at' },
  objectVersion: { column: 'x.object_version' },
  issuedBy: { column: 'x.issued_by' },
});

const TOKEN_ROWS = new RowMapper(ConsoleAuthTokenEntity, tokenColumns('x.tls_port'));
const TOKEN_ROWS_WITH_TLS_PORT = new RowMapper(ConsoleAuthTokenEntity, tokenColumns('COALESCE(t.tls_port, x.tls_port)'));
