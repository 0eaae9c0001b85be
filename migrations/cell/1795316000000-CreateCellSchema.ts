import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * A cell database. `console_auth_tokens` keeps the columns, types and meaning of Nova's cell table
 * of that name (so a keyhole proxy serves rows Nova wrote), with three fixes: `expires` is bigint
 * (Nova's 32-bit integer ends in 2038), `internal_access_path` is text (Nova bug 1900371), and
 * `expires` has an index of its own for the purge. keyhole's own columns all have defaults or
 * accept NULL, so Nova's INSERTs keep working.
 */
export class CreateCellSchema1795316000000 implements MigrationInterface {
  name = 'CreateCellSchema1795316000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE console_auth_tokens (
        created_at timestamp NULL DEFAULT timezone('utc', now()),
        updated_at timestamp NULL,
        id bigserial PRIMARY KEY,
        token_hash varchar(255) NOT NULL,
        console_type varchar(255) NOT NULL,
        host varchar(255) NOT NULL,
        port integer NOT NULL,
        tls_port integer NULL,
        internal_access_path text NULL,
        instance_uuid varchar(36) NOT NULL,
        expires bigint NOT NULL,
        access_url_base varchar(255) NULL,
        row_version integer NOT NULL DEFAULT 1,
        object_version varchar(16) NULL,
        issued_by varchar(32) NULL,
        CONSTRAINT uniq_console_auth_tokens0token_hash UNIQUE (token_hash),
        CONSTRAINT console_auth_tokens_token_hash_sha256 CHECK (token_hash ~ '^[0-9a-f]{64}$')
      )`);
    await queryRunner.query(`CREATE INDEX console_auth_tokens_instance_uuid_idx ON console_auth_tokens (instance_uuid)`);
    await queryRunner.query(`CREATE INDEX console_auth_tokens_host_expires_idx ON console_auth_tokens (host, expires)`);
    await queryRunner.query(`CREATE INDEX console_auth_tokens_expires_idx ON console_auth_tokens (expires)`);

    await queryRunner.query(`
      CREATE TABLE console_sessions (
        id uuid PRIMARY KEY,
        token_id bigint NULL,
        token_source varchar(16) NOT NULL DEFAULT 'database' CHECK (token_source IN ('database', 'legacy')),
        token_fingerprint varchar(12) NOT NULL,
        instance_uuid varchar(36) NOT NULL,
        console_type varchar(255) NOT NULL,
        host varchar(255) NOT NULL,
        port integer NOT NULL,
        proxy_instance varchar(255) NOT NULL,
        client_address varchar(64) NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        last_seen_at timestamptz NOT NULL DEFAULT now(),
        ended_at timestamptz NULL,
        close_reason varchar(64) NULL,
        bytes_to_client bigint NOT NULL DEFAULT 0,
        bytes_to_upstream bigint NOT NULL DEFAULT 0
      )`);
    // Live sessions are looked up by target (exclusive serial ports) and by token (revocation).
    await queryRunner.query(`CREATE INDEX console_sessions_live_target_idx ON console_sessions (host, port) WHERE ended_at IS NULL`);
    await queryRunner.query(`CREATE INDEX console_sessions_live_token_idx ON console_sessions (token_id) WHERE ended_at IS NULL`);
    await queryRunner.query(`CREATE INDEX console_sessions_instance_uuid_idx ON console_sessions (instance_uuid)`);
    await queryRunner.query(`CREATE INDEX console_sessions_ended_at_idx ON console_sessions (ended_at)`);

    // Append-only: the newest row of a name is its current value, the older rows its history.
    await queryRunner.query(`
      CREATE TABLE cell_settings (
        id bigserial PRIMARY KEY,
        name varchar(64) NOT NULL,
        value jsonb NOT NULL,
        changed_by varchar(128) NOT NULL,
        changed_at timestamptz NOT NULL DEFAULT now()
      )`);
    await queryRunner.query(`CREATE INDEX cell_settings_name_id_idx ON cell_settings (name, id DESC)`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE cell_settings`);
    await queryRunner.query(`DROP TABLE console_sessions`);
    await queryRunner.query(`DROP TABLE console_auth_tokens`);
  }
}
