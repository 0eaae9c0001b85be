import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Failed-authentication counts shared by the API replicas when KEYHOLE_AUTH_LIMITER=postgres: the
 * table rate-limiter-flexible's PostgreSQL store expects (`key`, `points`, `expire` in epoch ms),
 * created here rather than by the library at run time. `key` is `key:<key id>` or
 * `address:<client address or IPv6 /64>`; never a secret. Rows past `expire` are deleted by the
 * API itself (every 5 minutes, those expired an hour ago).
 */
export class CreateAuthFailures1796400000000 implements MigrationInterface {
  name = 'CreateAuthFailures1796400000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE auth_failures (
        key varchar(255) PRIMARY KEY,
        points integer NOT NULL DEFAULT 0,
        expire bigint
      )`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query('DROP TABLE auth_failures');
  }
}
