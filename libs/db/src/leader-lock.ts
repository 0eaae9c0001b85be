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
  try {
    const {
      rows: [{ locked }],
    } = await lockConnection.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [lockKey]);
    if (!locked) {
      return { ran: false };
    }
    try {
      return { ran: true, result: await task() };
    } finally {
      await lockConnection.query('SELECT pg_advisory_unlock($1)', [lockKey]);
    }
  } finally {
    lockConnection.release();
  }
}
