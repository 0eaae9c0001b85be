import { Client } from 'pg';
import { queryDatabase } from '../support/databases';
import { startPostgresServer, TestPostgresServer } from '../support/postgres-server';

/** A client that reports its failures as rejections, never as an unhandled 'error' event. */
async function connectClient(url: string): Promise<Client> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/** Whether `SELECT 1` on `client` answers within `withinMs`. */
async function answersWithin(client: Client, withinMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), withinMs)));
  const answered = client.query('SELECT 1').then(
    () => true,
    () => false,
  );
  const result = await Promise.race([answered, late]);
  clearTimeout(timer);
  return result;
}

/**
 * The PostgreSQL the fault tests freeze and kill, proven without keyhole: migrated databases at
 * start, a frozen server that answers nothing (not even on a connection opened before), and a
 * restart on the same port that keeps what was committed.
 */
describe('test PostgreSQL server harness', () => {
  let server: TestPostgresServer;

  beforeAll(async () => {
    server = await startPostgresServer();
  }, 60_000);

  afterAll(async () => {
    await server?.close();
  }, 15_000);

  it('starts with the control and cell schemas migrated', async () => {
    const tables = async (url: string, schema: string) =>
      (await queryDatabase<{ name: string }>(url, 'SELECT tablename AS name FROM pg_tables WHERE schemaname = $1', [schema])).map(
        (row) => row.name,
      );
    expect(await tables(server.controlUrl, 'public')).toEqual(expect.arrayContaining(['cells', 'api_credentials']));
    expect(await tables(server.cellUrl, 'keyhole')).toEqual(
      expect.arrayContaining(['console_auth_tokens', 'console_sessions', 'cell_settings']),
    );
  });

  it('a frozen server answers neither an open connection nor a new one, and answers both again once resumed', async () => {
    const open = await connectClient(server.cellUrl);
    try {
      expect(await answersWithin(open, 2_000)).toBe(true);
      server.pause();
      expect(await answersWithin(open, 1_000)).toBe(false);
      await expect(connectClient(server.cellUrl)).rejects.toThrow(/timeout/i);
      server.resume();
      // The query sent while frozen is answered now, and so is the next.
      expect(await answersWithin(open, 2_000)).toBe(true);
      const fresh = await connectClient(server.cellUrl);
      expect(await answersWithin(fresh, 2_000)).toBe(true);
      await fresh.end();
    } finally {
      server.resume();
      await open.end().catch(() => undefined);
    }
  }, 20_000);

  it('a killed server refuses connections; restarted on the same port it has kept committed rows', async () => {
    await queryDatabase(server.cellUrl, "INSERT INTO cell_settings (name, value, changed_by) VALUES ('harness', 'true'::jsonb, 'test')");
    await server.kill();
    expect(server.running).toBe(false);
    await expect(connectClient(server.cellUrl)).rejects.toThrow(/ECONNREFUSED/);
    await server.restart();
    expect(server.running).toBe(true);
    const rows = await queryDatabase<{ name: string }>(server.cellUrl, "SELECT name FROM cell_settings WHERE name = 'harness'");
    expect(rows).toHaveLength(1);
  }, 60_000);
});
