import { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The live sessions of each proxy, by when they were last seen: what the reaper (live rows whose
 * heartbeat is older than the stale threshold) and a restarting proxy (its own earlier live rows)
 * look up. Partial, like the other live-session indexes: it holds only rows not yet ended, so it
 * stays small however many ended rows the retention keeps.
 */
export class AddLiveSessionProxyIndex1796410000000 implements MigrationInterface {
  name = 'AddLiveSessionProxyIndex1796410000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(
      'CREATE INDEX console_sessions_live_proxy_idx ON console_sessions (proxy_instance, last_seen_at) WHERE ended_at IS NULL',
    );
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query('DROP INDEX console_sessions_live_proxy_idx');
  }
}
