import type { Pool } from 'pg';
import { createPool, DeadlineStage, inTransaction } from '@keyhole/db';
import { startPostgresServer, TestPostgresServer } from '../support/postgres-server';

const DEADLINE_MS = 500;
/** A deadline plus scheduling slack on a busy machine. */
const WITHIN_MS = DEADLINE_MS + 700;

async function timedFailure(work: () => Promise<unknown>): Promise<{ error: Error; ms: number }> {
  const started = performance.now();
  try {
    await work();
  } catch (error) {
    return { error: error as Error, ms: performance.now() - started };
  }
  throw new Error('expected the database operation to fail');
}

/**
 * keyhole's pool (createPool) on a PostgreSQL that stops answering: every operation ends within
 * its client-side deadline, a connection whose statement missed it is thrown away rather than
 * reused, and the pool serves again once the server answers, without being recreated.
 */
describe('database pool deadlines', () => {
  let server: TestPostgresServer;
  let pool: Pool;
  const missed: DeadlineStage[] = [];

  beforeAll(async () => {
    server = await startPostgresServer();
    pool = createPool({
      url: server.cellUrl,
      poolSize: 2,
      connectTimeoutMs: DEADLINE_MS,
      queryTimeoutMs: DEADLINE_MS,
      statementTimeoutMs: DEADLINE_MS,
      applicationName: 'keyhole-deadline-test',
      onDeadlineExceeded: (stage) => missed.push(stage),
    });
  }, 60_000);

  afterEach(() => server.resume());

  afterAll(async () => {
    await pool?.end();
    await server?.close();
  }, 15_000);

  /** Both connections of the pool open and idle. */
  const warmUp = async () => {
    await Promise.all([pool.query('SELECT pg_sleep(0.05)'), pool.query('SELECT pg_sleep(0.05)')]);
    expect(pool.idleCount).toBe(2);
  };

  it('ends a statement on a frozen server at its deadline and throws its connection away; waiting for a connection is bounded too', async () => {
    await warmUp();
    missed.length = 0;
    server.pause();
    const [first, second, third] = await Promise.all([
      timedFailure(() => pool.query('SELECT 1')),
      timedFailure(() => pool.query('SELECT 1')),
      // Both connections hang: this one waits for a connection, and gets none in time.
      timedFailure(() => pool.query('SELECT 1')),
    ]);
    expect([first.error.message, second.error.message]).toEqual(['Query read timeout', 'Query read timeout']);
    expect(third.error.message).toMatch(/timeout exceeded when trying to connect|Connection terminated due to connection timeout/);
    for (const { ms } of [first, second, third]) {
      expect(ms).toBeLessThan(WITHIN_MS);
    }
    // The stuck connections are gone, not waiting in the pool for the next caller.
    expect(pool.idleCount).toBe(0);
    expect(missed.sort()).toEqual(['connect', 'query', 'query']);

    server.resume();
    const { rows } = await pool.query<{ answer: number }>('SELECT 1 AS answer');
    expect(rows).toEqual([{ answer: 1 }]);
  }, 20_000);

  it('gives up a transaction on a frozen server after one deadline, without waiting out another for its rollback', async () => {
    await warmUp();
    const client = await pool.connect();
    client.release();
    server.pause();
    const failed = await timedFailure(() => inTransaction(pool, (transaction) => transaction.query('SELECT 1')));
    expect(failed.error.message).toBe('Query read timeout');
    expect(failed.ms).toBeLessThan(WITHIN_MS);
    server.resume();
    await expect(inTransaction(pool, async (transaction) => (await transaction.query('SELECT 2 AS two')).rows)).resolves.toEqual([
      { two: 2 },
    ]);
  }, 20_000);

  it('fails at once while the server is down, and serves again once it is restarted', async () => {
    await warmUp();
    await server.kill();
    const failed = await timedFailure(() => pool.query('SELECT 1'));
    expect(failed.ms).toBeLessThan(WITHIN_MS);
    await server.restart();
    // A connection the dead server left in the pool fails once (and is replaced); then all is well.
    await pool.query('SELECT 1').catch(() => undefined);
    await expect(pool.query('SELECT 3 AS three')).resolves.toMatchObject({ rows: [{ three: 3 }] });
  }, 60_000);
});
