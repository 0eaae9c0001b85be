import { MigrationInterface, QueryRunner } from 'typeorm';

/** The control database: registered cells and the API credentials of agents and operators. */
export class CreateControlSchema1795316000000 implements MigrationInterface {
  name = 'CreateControlSchema1795316000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE cells (
        name varchar(63) PRIMARY KEY CHECK (name ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
        database_url text NOT NULL,
        proxy_url varchar(255) NOT NULL,
        access_url_bases jsonb NOT NULL DEFAULT '{}'::jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
      )`);
    await queryRunner.query(`
      CREATE TABLE api_credentials (
        id varchar(32) PRIMARY KEY,
        name varchar(128) NOT NULL,
        role varchar(16) NOT NULL CHECK (role IN ('agent', 'operator')),
        cell_name varchar(63) NULL,
        secret_hash text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        last_used_at timestamptz NULL,
        revoked_at timestamptz NULL,
        -- an agent always acts for exactly one cell
        CONSTRAINT api_credentials_agent_has_cell CHECK (role <> 'agent' OR cell_name IS NOT NULL)
      )`);
    await queryRunner.query(`CREATE INDEX api_credentials_cell_name_idx ON api_credentials (cell_name)`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE api_credentials`);
    await queryRunner.query(`DROP TABLE cells`);
  }
}
