import { createTestDatabase, migrateTestDatabase, queryDatabase } from '../support/databases';

describe('migrations', () => {
  it('build the cell schema with the indexes Nova has plus one on expires, and run only once', async () => {
    const cell = await createTestDatabase('cell');
    try {
      const indexes = await queryDatabase<{ indexname: string; indexdef: string }>(
        cell.url,
        `SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'console_auth_tokens' ORDER BY indexname`,
      );
      const definitions = Object.fromEntries(indexes.map((index) => [index.indexname, index.indexdef]));
      expect(definitions.uniq_console_auth_tokens0token_hash).toMatch(/UNIQUE INDEX .* \(token_hash\)/);
      expect(definitions.console_auth_tokens_instance_uuid_idx).toMatch(/\(instance_uuid\)/);
      expect(definitions.console_auth_tokens_host_expires_idx).toMatch(/\(host, expires\)/);
      expect(definitions.console_auth_tokens_expires_idx).toMatch(/\(expires\)/);
      const columns = await queryDatabase<{ column_name: string; data_type: string; is_nullable: string }>(
        cell.url,
        `SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = 'console_auth_tokens'`,
      );
      const byName = Object.fromEntries(columns.map((column) => [column.column_name, column]));
      // Nova's columns with Nova's nullability; expires widened past 2038.
      for (const name of ['token_hash', 'console_type', 'host', 'port', 'instance_uuid', 'expires']) {
        expect(byName[name].is_nullable).toBe('NO');
      }
      for (const name of ['tls_port', 'internal_access_path', 'access_url_base', 'created_at', 'updated_at']) {
        expect(byName[name].is_nullable).toBe('YES');
      }
      expect(byName.expires.data_type).toBe('bigint');

      expect(await migrateTestDatabase('cell', cell.url)).toEqual([]);
    } finally {
      await cell.drop();
    }
  });

  it('give console_sessions a nullable route column, empty for the sessions recorded before it', async () => {
    const cell = await createTestDatabase('cell');
    try {
      const [route] = await queryDatabase<{ data_type: string; is_nullable: string; character_maximum_length: number }>(
        cell.url,
        `SELECT data_type, is_nullable, character_maximum_length FROM information_schema.columns
          WHERE table_name = 'console_sessions' AND column_name = 'route'`,
      );
      expect(route).toEqual({ data_type: 'character varying', is_nullable: 'YES', character_maximum_length: 63 });
    } finally {
      await cell.drop();
    }
  });

  it('refuses a token_hash that is not 64 lowercase hex', async () => {
    const cell = await createTestDatabase('cell');
    try {
      await expect(
        queryDatabase(
          cell.url,
          `INSERT INTO console_auth_tokens (token_hash, console_type, host, port, instance_uuid, expires)
           VALUES ('plaintext-token', 'novnc', 'h', 1, 'i', 1)`,
        ),
      ).rejects.toThrow(/console_auth_tokens_token_hash_sha256/);
    } finally {
      await cell.drop();
    }
  });
});
