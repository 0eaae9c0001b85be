import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * keyhole's own per-token data (the object version a row was written at, the credential that
 * issued it, and tls_port for a token table without that column) moves out of the token table into
 * `console_auth_token_extras`, keyed by token hash, so that the token table can be Nova's own
 * `public.console_auth_tokens`, to which keyhole never adds a column, constraint or trigger (Nova
 * reads and writes it through SQLAlchemy with its own columns, and its own later migrations must
 * still apply: upstream 2903cd72dc14 adds `tls_port`, which a keyhole column of that name would
 * collide with). Keyed by hash, not id: the hash is what identifies a token in both token tables,
 * and it survives adoption into Nova's table, which gives rows new ids. No foreign key into the
 * token table: one would block Nova's own deletes (clean_console_auths_for_instance) and a future
 * rebuild of its table. `expires` is copied so that the purge removes extras by expiry, orphans of
 * tokens that Nova deleted included.
 *
 * Runs in the `keyhole` schema like every cell migration (the runner sets the search_path), so
 * `console_auth_tokens` here is keyhole's own token table: its `row_version` (never read or bumped)
 * and the moved columns are dropped; `tls_port` stays, as in Nova >= 31's table.
 */
export class MoveTokenExtrasToSideTable1796500000000 implements MigrationInterface {
  name = 'MoveTokenExtrasToSideTable1796500000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE console_auth_token_extras (
        token_hash varchar(255) PRIMARY KEY,
        expires bigint NOT NULL,
        tls_port integer NULL,
        object_version varchar(16) NULL,
        issued_by varchar(32) NULL
      )`);
    await queryRunner.query('CREATE INDEX console_auth_token_extras_expires_idx ON console_auth_token_extras (expires)');
    await queryRunner.query(`
      INSERT INTO console_auth_token_extras (token_hash, expires, tls_port, object_version, issued_by)
      SELECT token_hash, expires, tls_port, object_version, issued_by FROM console_auth_tokens
       WHERE tls_port IS NOT NULL OR object_version IS NOT NULL OR issued_by IS NOT NULL`);
    await queryRunner.query('ALTER TABLE console_auth_tokens DROP COLUMN row_version, DROP COLUMN object_version, DROP COLUMN issued_by');
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`ALTER TABLE console_auth_tokens ADD COLUMN row_version integer NOT NULL DEFAULT 1,
      ADD COLUMN object_version varchar(16) NULL, ADD COLUMN issued_by varchar(32) NULL`);
    await queryRunner.query(`UPDATE console_auth_tokens t SET object_version = x.object_version, issued_by = x.issued_by
      FROM console_auth_token_extras x WHERE x.token_hash = t.token_hash`);
    await queryRunner.query('DROP TABLE console_auth_token_extras');
  }
}
