import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * One live session per exclusive console target (serial ports, Nova bug 1425640), enforced by a
 * partial unique index, so a proxy claims a port with one INSERT ... ON CONFLICT DO NOTHING instead
 * of a transaction under an advisory lock. The predicate names the exclusive console types of the
 * proxy (EXCLUSIVE_CONSOLE_TYPES in libs/proxy): a type added there needs a migration here.
 * Duplicates cannot exist under the advisory-lock protocol, but are ended first (keeping the one
 * seen last) so that the index can always be built.
 */
export class AddExclusiveConsoleIndex1796025000000 implements MigrationInterface {
  name = 'AddExclusiveConsoleIndex1796025000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      UPDATE console_sessions s SET ended_at = now(), close_reason = 'proxy lost'
       WHERE s.ended_at IS NULL AND s.console_type = 'serial'
         AND EXISTS (
           SELECT 1 FROM console_sessions o
            WHERE o.host = s.host AND o.port = s.port AND o.console_type = 'serial' AND o.ended_at IS NULL
              AND (o.last_seen_at, o.id) > (s.last_seen_at, s.id))`);
    await queryRunner.query(
      `CREATE UNIQUE INDEX console_sessions_exclusive_target_idx ON console_sessions (host, port)
        WHERE ended_at IS NULL AND console_type = 'serial'`,
    );
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query('DROP INDEX console_sessions_exclusive_target_idx');
  }
}
