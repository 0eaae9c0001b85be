import { Column, Entity, PrimaryColumn } from 'typeorm';
import { bigintAsNumber, int8AsNumber } from '../column-transformers';
import { RowMapper } from '../row-mapper';

/** One proxied console connection, written by the console proxy of the cell. */
@Entity({ name: 'console_sessions' })
export class ConsoleSessionEntity {
  @PrimaryColumn({ type: 'uuid' })
  id!: string;

  @Column({ name: 'token_id', type: 'bigint', nullable: true, transformer: bigintAsNumber })
  tokenId!: number | null;

  @Column({ name: 'token_source', type: 'varchar', length: 16, default: 'database' })
  tokenSource!: 'database' | 'legacy';

  @Column({ name: 'token_fingerprint', type: 'varchar', length: 12 })
  tokenFingerprint!: string;

  @Column({ name: 'instance_uuid', type: 'varchar', length: 36 })
  instanceUuid!: string;

  @Column({ name: 'console_type', type: 'varchar', length: 255 })
  consoleType!: string;

  @Column({ type: 'varchar', length: 255 })
  host!: string;

  @Column({ type: 'integer' })
  port!: number;

  @Column({ name: 'proxy_instance', type: 'varchar', length: 255 })
  proxyInstance!: string;

  @Column({ name: 'client_address', type: 'varchar', length: 64, nullable: true })
  clientAddress!: string | null;

  /** The name of the route that reached the console (null when the proxy had no routes file). */
  @Column({ type: 'varchar', length: 63, nullable: true })
  route!: string | null;

  @Column({ name: 'started_at', type: 'timestamptz' })
  startedAt!: Date;

  @Column({ name: 'last_seen_at', type: 'timestamptz' })
  lastSeenAt!: Date;

  @Column({ name: 'ended_at', type: 'timestamptz', nullable: true })
  endedAt!: Date | null;

  @Column({ name: 'close_reason', type: 'varchar', length: 64, nullable: true })
  closeReason!: string | null;

  @Column({ name: 'bytes_to_client', type: 'bigint', default: 0, transformer: bigintAsNumber })
  bytesToClient!: number;

  @Column({ name: 'bytes_to_upstream', type: 'bigint', default: 0, transformer: bigintAsNumber })
  bytesToUpstream!: number;
}

/** How keyhole's SQL statements read `console_sessions` rows. */
export const consoleSessionRows = new RowMapper(ConsoleSessionEntity, {
  id: { column: 'id' },
  tokenId: { column: 'token_id', read: int8AsNumber },
  tokenSource: { column: 'token_source' },
  tokenFingerprint: { column: 'token_fingerprint' },
  instanceUuid: { column: 'instance_uuid' },
  consoleType: { column: 'console_type' },
  host: { column: 'host' },
  port: { column: 'port' },
  proxyInstance: { column: 'proxy_instance' },
  clientAddress: { column: 'client_address' },
  route: { column: 'route' },
  startedAt: { column: 'started_at' },
  lastSeenAt: { column: 'last_seen_at' },
  endedAt: { column: 'ended_at' },
  closeReason: { column: 'close_reason' },
  bytesToClient: { column: 'bytes_to_client', read: int8AsNumber },
  bytesToUpstream: { column: 'bytes_to_upstream', read: int8AsNumber },
});
