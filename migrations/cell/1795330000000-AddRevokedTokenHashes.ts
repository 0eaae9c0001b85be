import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Hashes of revoked tokens, kept until the token would have expired. The legacy fallback asks it
 * before Redis: a token revoked in keyhole must never come back through a legacy copy of it (the
 * legacy store is keyed by plaintext, so a copy cannot be found and deleted by token id).
 */
export class AddRevokedTokenHashes1795330000000 implements MigrationInterface {
  name = 'AddRevokedTokenHashes1795330000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE revoked_token_hashes (
        token_hash varchar(64) PRIMARY KEY,
        expires bigint NOT NULL,
        revoked_at timestamptz NOT NULL DEFAULT now()
      )`);
    await queryRunner.query('CREATE INDEX revoked_token_hashes_expires_idx ON revoked_token_hashes (expires)');
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query('DROP TABLE revoked_token_hashes');
  }
}
