import type { Pool } from 'pg';
import { CellTokenTable } from './cell-token-table';

/** A pool whose catalog answers the schema of the token table that `schema()` names at the time. */
function catalog(initial: 'keyhole' | 'public' | null) {
  let schema = initial;
  let hasTlsPort = true;
  const query = jest.fn(() => Promise.resolve({ rows: schema === null ? [] : [{ schema, hasTlsPort }] }));
  return {
    pool: { query } as unknown as Pool,
    query,
    novaAppears: (withTlsPort = false) => {
      schema = 'public';
      hasTlsPort = withTlsPort;
    },
  };
}

describe('CellTokenTable', () => {
  let nowMs = 1_000_000;
  const clock = () => nowMs;

  it("is keyhole's own table until Nova's exists, then Nova's", async () => {
    const database = catalog('keyhole');
    const table = new CellTokenTable('cell1', database.pool, clock);
    expect(await table.shape()).toEqual({ table: 'keyhole.console_auth_tokens', nova: false, hasTlsPort: true, key: 'own_tls' });
    database.novaAppears();
    expect(await table.resolve()).toEqual({ table: 'public.console_auth_tokens', nova: true, hasTlsPort: false, key: 'nova' });
  });

  it('looks again after a miss at most once a second, and answers the new shape only when it changed', async () => {
    const database = catalog('keyhole');
    const table = new CellTokenTable('cell1', database.pool, clock);
    const own = await table.shape();
    expect(database.query).toHaveBeenCalledTimes(1);

    nowMs += 999;
    expect(await table.recheckAfterMiss(own)).toBeNull();
    expect(database.query).toHaveBeenCalledTimes(1);

    nowMs += 1;
    expect(await table.recheckAfterMiss(own)).toBeNull();
    expect(database.query).toHaveBeenCalledTimes(2);

    database.novaAppears(true);
    nowMs += 500;
    expect(await table.recheckAfterMiss(own)).toBeNull();
    nowMs += 500;
    expect(await table.recheckAfterMiss(own)).toMatchObject({ nova: true, hasTlsPort: true, key: 'nova_tls' });
    expect(await table.shape()).toMatchObject({ key: 'nova_tls' });
  });

  it('answers the known shape at once and refreshes it in the background once it is 10 s old', async () => {
    const database = catalog('public');
    const table = new CellTokenTable('cell1', database.pool, clock);
    await table.shape();
    nowMs += 10_000;
    await table.shape();
    expect(database.query).toHaveBeenCalledTimes(1);
    nowMs += 1;
    await table.shape();
    expect(database.query).toHaveBeenCalledTimes(2);
  });

  it('fails, naming the cell and the command, when the database has no token table, and tries again on the next call', async () => {
    const database = catalog(null);
    const table = new CellTokenTable('cell9', database.pool, clock);
    await expect(table.shape()).rejects.toThrow('cell cell9 has no console_auth_tokens table: run `keyhole migrate`');
    await expect(table.shape()).rejects.toThrow('cell9');
    expect(database.query).toHaveBeenCalledTimes(2);
  });
});
