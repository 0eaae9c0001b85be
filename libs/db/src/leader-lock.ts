import type { Pool } from 'pg';

/** What a leader-only task did: nothing when another process held the lock. */
export type LeaderRun<T> = { ran: false } | { ran: true; result: T };

/**
 * Runs `task` only if this process wins the database-wide advisory lock `lockKey`, so that of
 * all the replicas that schedule the same job on one database (a cell's purge, its session
 * reaper), one runs it at a time and the others skip that turn. The lock is a session lock, held
 * on one connection for the task's duration (the task's own statements use other pooled
 * connections); a process that dies mid-task loses it with its connection.
 */
export async function runAsLeader<T>(pool: Pool, lockKey: number, task: () => Promise<T>): Promise<LeaderRun<T>> {
  const lockConnection = await pool.connect();
  let failure: Error | undefined;
  try {
    const {
      rows: [{ locked }],
    } = await lockConnection.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [lockKey]);
    if (!locked) {
      return { ran: false };
    }
    const result = await task();
    await lockConnection.query('SELECT pg_advisory_unlock($1)', [lockKey]);
    return { ran: true, result };
  } catch (error) {
    // A failed run discards the lock connection instead of unlocking: ending its session releases
    // the lock, and on a database that missed a deadline the unlock would wait out another one.
    // (An error of its own: a deadline the task missed is counted where it happened.)
    failure = new Error('leader task failed: its lock connection is discarded', { cause: error });
    throw error;
  } finally {
    lockConnection.release(failure);
  }
}
