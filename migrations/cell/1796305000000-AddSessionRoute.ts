import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The name of the route (from the proxy's routes file) that reached each session's console, so that
 * an operator sees which proxy node or connector carried it. Nullable: sessions of a proxy without a
 * routes file, and every session recorded before this migration, have none.
 */
export class AddSessionRoute1796305000000 implements MigrationInterface {
  name = 'AddSessionRoute1796305000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query('ALTER TABLE console_sessions ADD COLUMN route varchar(63)');
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query('ALTER TABLE console_sessions DROP COLUMN route');
  }
}
