import type { Pool } from 'pg';
import { FailureLimiter, FailureLimiterOptions, ThrottleGrant, ThrottleRefusal } from './failure-limiter';

/** A stand-in for the control database's pool: answers rate-limiter-flexible's upsert as PostgreSQL would, or fails. */
class FakePool {
  mode: 'up' | 'down' | 'frozen' = 'up';
  private readonly rows = new Map<string, { points: number; expire: number }>();

  query(query: { text: string; values: unknown[] }): Promise<{ rows: { points: number; expire: number }[]; rowCount: number }> {
    if (this.mode === 'down') {
      return Promise.reject(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }));
    }
    if (this.mode === 'frozen') {
      return new Promise(() => undefined);
    }
    const [key, points, expire] = query.values as [string, number, number];
    const current = this.rows.get(key);
    const row = current && current.expire > Date.now() ? { points: current.points + points, expire: current.expire } : { points, expire };
    this.rows.set(key, row);
    return Promise.resolve({ rows: [row], rowCount: 1 });
  }
}

function isRefusal(result: ThrottleGrant | ThrottleRefusal): result is ThrottleRefusal {
  return 'reason' in result;
}

describe('FailureLimiter', () => {
  let failures: { first: boolean }[];
  let recoveries: number;

  const limiter = (overrides: Partial<FailureLimiterOptions> = {}) =>
    new FailureLimiter({
      failuresPerKey: 2,
      failuresPerAddress: 3,
      windowSeconds: 60,
      sharedTimeoutMs: 50,
      onSharedStoreFailure: (_error, first) => failures.push({ first }),
      onSharedStoreRecovered: () => (recoveries += 1),
      ...overrides,
    });

  beforeEach(() => {
    failures = [];
    recoveries = 0;
  });

  it('refuses a key id past its limit with the seconds left in its window, and gives back the points of a success', async () => {
    const memory = limiter();
    const success = await memory.reserve('key-a', '192.0.2.1');
    expect(isRefusal(success)).toBe(false);
    await (success as ThrottleGrant).release();
    expect(isRefusal(await memory.reserve('key-a', '192.0.2.2'))).toBe(false);
    expect(isRefusal(await memory.reserve('key-a', '192.0.2.3'))).toBe(false);
    const refused = await memory.reserve('key-a', '192.0.2.4');
    expect(refused).toEqual({ reason: 'rate_limited_key', retryAfterSeconds: 60 });
  });

  it('refuses an address past its limit across key ids, without using up the key id it tried', async () => {
    const memory = limiter();
    for (const key of ['key-a', 'key-b', 'key-c']) {
      expect(isRefusal(await memory.reserve(key, '192.0.2.1'))).toBe(false);
    }
    expect(await memory.reserve('key-d', '192.0.2.1')).toMatchObject({ reason: 'rate_limited_address' });
    // key-d was refused by its address: its own count is untouched.
    expect(isRefusal(await memory.reserve('key-d', '192.0.2.2'))).toBe(false);
    expect(isRefusal(await memory.reserve('key-d', '192.0.2.3'))).toBe(false);
  });

  it('counts in the shared store while it answers, in memory while it fails or hangs, and says so once per outage', async () => {
    const pool = new FakePool();
    const shared = limiter({ shared: { kind: 'postgres', pool: pool as unknown as Pool } });
    expect(isRefusal(await shared.reserve('key-a', '192.0.2.1'))).toBe(false);
    pool.mode = 'down';
    expect(isRefusal(await shared.reserve('key-b', '192.0.2.1'))).toBe(false);
    pool.mode = 'frozen';
    const started = Date.now();
    expect(isRefusal(await shared.reserve('key-b', '192.0.2.1'))).toBe(false);
    expect(Date.now() - started).toBeLessThan(1_000);
    // Still limited meanwhile: key-b's third failure is over its limit of 2, counted in memory.
    expect(await shared.reserve('key-b', '192.0.2.2')).toMatchObject({ reason: 'rate_limited_key' });
    expect(failures.map((failure) => failure.first)).toEqual([true, false, false, false, false, false]);
    pool.mode = 'up';
    expect(isRefusal(await shared.reserve('key-c', '192.0.2.3'))).toBe(false);
    expect(recoveries).toBe(1);
  });
});
