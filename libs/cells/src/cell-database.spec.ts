import type { Pool } from 'pg';
import { CellDatabase } from './cell-database';

/** A pool with only the methods CellDatabase may call; anything else is a TypeError. */
function poolMock(query: jest.Mock) {
  const end = jest.fn().mockResolvedValue(undefined);
  return { pool: { query, end } as unknown as Pool, end };
}

describe('CellDatabase', () => {
  it('fails to open, and reports itself unreachable, when the database does not answer', async () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    const { pool } = poolMock(jest.fn().mockRejectedValue(refused));
    const database = new CellDatabase('cell1', pool);
    await expect(database.open()).rejects.toBe(refused);
    await expect(database.isReachable()).resolves.toBe(false);
  });

  it('opens and reports itself reachable when the database answers', async () => {
    const { pool } = poolMock(jest.fn().mockResolvedValue({ rows: [{ '?column?': 1 }] }));
    const database = new CellDatabase('cell1', pool);
    await expect(database.open()).resolves.toBeUndefined();
    await expect(database.isReachable()).resolves.toBe(true);
  });

  it('ends its pool once, however often it is closed (shutdown after a cell was removed)', async () => {
    const { pool, end } = poolMock(jest.fn());
    const database = new CellDatabase('cell1', pool);
    await Promise.all([database.close(), database.close()]);
    await database.close();
    expect(end).toHaveBeenCalledTimes(1);
  });
});
