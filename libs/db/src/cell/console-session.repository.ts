import type { Pool, PoolClient } from 'pg';
import { ConsoleSessionEntity, consoleSessionRows } from './console-session.entity';
import { CONSOLE_EVENTS_CHANNEL, consoleEventPayloads } from './console-events';
import { inTransaction, runCounted, runPrepared } from '../database-pool';

export type NewConsoleSessionRow = Pick<
  ConsoleSessionEntity,
  | 'id'
  | 'tokenId'
  | 'tokenSource'
  | 'tokenFingerprint'
  | 'instanceUuid'
  | 'consoleType'
  | 'host'
  | 'port'
  | 'proxyInstance'
  | 'clientAddress'
  | 'route'
>;

export interface SessionCounters {
  id: string;
  bytesToClient: number;
  bytesToUpstream: number;
}

/** How a session ended: its reason and its byte counts. */
export interface SessionEnd extends SessionCounters {
  reason: string;
}

/** A session to record, with its end when it ended before it was written. */
export interface SessionRecord extends NewConsoleSessionRow {
  end?: Omit<SessionEnd, 'id'>;
}

export interface SessionListFilter {
  liveOnly: boolean;
  instanceUuid?: string;
  limit: number;
}

/** Close reason of a live session ended because its proxy stopped reporting (reaper, exclusive claim). */
export const LOST_PROXY_REASON = 'proxy lost';
/** Close reason of a live session ended by its own proxy's next start (the earlier run was killed). */
export const RESTARTED_PROXY_REASON = 'proxy restarted';

/** `console_sessions` of one cell: one row per proxied connection. */
export class ConsoleSessionRepository {
  constructor(
    readonly cellName: string,
    private readonly pool: Pool,
  ) {}

  /**
   * Records sessions in one statement. A session that already ended before it could be recorded
   * (a batch is written while the next connects go on) is inserted with its end. Idempotent: a
   * batch written again after a failure whose commit did land keeps the rows it wrote.
   */
  async insertBatch(rows: SessionRecord[]): Promise<void> {
    if (rows.length === 0) {
      return;
    }
    await runPrepared(
      this.pool,
      'keyhole_insert_sessions',
      `INSERT INTO console_sessions (id, token_id, token_source, token_fingerprint, instance_uuid, console_type, host, port,
                                     proxy_instance, client_address, route, ended_at, close_reason, bytes_to_client, bytes_to_upstream)
       SELECT v.id, v.token_id, v.token_source, v.token_fingerprint, v.instance_uuid, v.console_type, v.host, v.port,
              v.proxy_instance, v.client_address, v.route, CASE WHEN v.close_reason IS NULL THEN NULL ELSE now() END, v.close_reason,
              v.to_client, v.to_upstream
         FROM unnest($1::uuid[], $2::bigint[], $3::varchar[], $4::varchar[], $5::varchar[], $6::varchar[], $7::varchar[], $8::int[],
                     $9::varchar[], $10::varchar[], $11::varchar[], $12::bigint[], $13::bigint[], $14::varchar[])
           AS v(id, token_id, token_source, token_fingerprint, instance_uuid, console_type, host, port,
                proxy_instance, client_address, close_reason, to_client, to_upstream, route)
       ON CONFLICT (id) DO NOTHING`,
      [
        rows.map((row) => row.id),
        rows.map((row) => row.tokenId),
        rows.map((row) => row.tokenSource),
        rows.map((row) => row.tokenFingerprint),
        rows.map((row) => row.instanceUuid),
        rows.map((row) => row.consoleType),
        rows.map((row) => row.host),
        rows.map((row) => row.port),
        rows.map((row) => row.proxyInstance),
        rows.map((row) => row.clientAddress),
        rows.map((row) => row.end?.reason ?? null),
        rows.map((row) => row.end?.bytesToClient ?? 0),
        rows.map((row) => row.end?.bytesToUpstream ?? 0),
        rows.map((row) => row.route),
      ],
    );
  }

  /**
   * Records one live session only if no other live session uses the same exclusive console
   * target (serial ports), across every proxy of the cell, in one statement: the partial unique
   * index `console_sessions_exclusive_target_idx` decides between concurrent claims. A live session
   * on the target whose proxy has not reported for `staleAfterMs` is taken as dead (its proxy
   * crashed) and ended by the same statement first. Returns the id of the session holding the
   * console, or null when this one was recorded.
   */
  async insertExclusive(row: NewConsoleSessionRow, staleAfterMs: number): Promise<string | null> {
    // A holder may end between the refused insert and the look-up of its id: then try again.
    for (let attempt = 0; attempt < 3; attempt++) {
      const inserted = await runPrepared<{ id: string }>(
        this.pool,
        'keyhole_claim_exclusive_console',
        // The stale holder is ended before the insert is checked: the count() in the WHERE is an
        // init plan that runs the UPDATE to completion first, and a row this statement updated no
        // longer conflicts.
        `WITH stale AS (
           UPDATE console_sessions SET ended_at = now(), close_reason = '${LOST_PROXY_REASON}'
            WHERE host = $7 AND port = $8 AND console_type = $6 AND ended_at IS NULL
              AND last_seen_at < now() - make_interval(secs => $11::float8 / 1000)
           RETURNING 1)
         INSERT INTO console_sessions (id, token_id, token_source, token_fingerprint, instance_uuid, console_type, host, port, proxy_instance, client_address, route)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12 WHERE (SELECT count(*) FROM stale) >= 0
         ON CONFLICT DO NOTHING
         RETURNING id`,
        [
          row.id,
          row.tokenId,
          row.tokenSource,
          row.tokenFingerprint,
          row.instanceUuid,
          row.consoleType,
          row.host,
          row.port,
          row.proxyInstance,
          row.clientAddress,
          staleAfterMs,
          row.route,
        ],
      );
      if (inserted.length > 0) {
        return null;
      }
      const { rows: holders } = await this.pool.query<{ id: string }>(
        'SELECT id FROM console_sessions WHERE host = $1 AND port = $2 AND console_type = $3 AND ended_at IS NULL LIMIT 1',
        [row.host, row.port, row.consoleType],
      );
      if (holders.length > 0) {
        return holders[0].id;
      }
    }
    throw new Error('could not claim an exclusive console: its holder kept changing');
  }

  /**
   * Marks these live sessions as seen now, with their byte counts so far (one statement). Returns
   * the ids among them whose row was already ended by someone else (the reaper, while this proxy
   * could not reach the database for longer than the stale time; an operator): the proxy is to
   * close them, so that a row said ended is a session really gone. A session whose row is not
   * written yet is neither updated nor returned.
   */
  async heartbeat(sessions: SessionCounters[]): Promise<string[]> {
    if (sessions.length === 0) {
      return [];
    }
    // The SELECT sees the rows as they were before the UPDATE: those ended then are the others' ends.
    const { rows } = await this.pool.query<{ id: string }>(
      `WITH v AS (SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS v(id, to_client, to_upstream)),
            seen AS (
              UPDATE console_sessions s
                 SET last_seen_at = now(), bytes_to_client = v.to_client, bytes_to_upstream = v.to_upstream
                FROM v
               WHERE s.id = v.id AND s.ended_at IS NULL)
       SELECT s.id FROM console_sessions s JOIN v ON s.id = v.id WHERE s.ended_at IS NOT NULL`,
      [sessions.map((s) => s.id), sessions.map((s) => s.bytesToClient), sessions.map((s) => s.bytesToUpstream)],
    );
    return rows.map((row) => row.id);
  }

  /**
   * Records the end of sessions in one statement; a reason already set (by an operator) is kept,
   * except `proxy lost`: the reaper's guess gives way to the proxy's own account, written late
   * because the database did not take it earlier. Each session's row must have been written before.
   */
  async endBatch(ends: SessionEnd[]): Promise<void> {
    if (ends.length === 0) {
      return;
    }
    await runPrepared(
      this.pool,
      'keyhole_end_sessions',
      `UPDATE console_sessions s
          SET ended_at = COALESCE(ended_at, now()),
              close_reason = CASE WHEN close_reason IS NULL OR close_reason = '${LOST_PROXY_REASON}' THEN v.reason ELSE close_reason END,
              last_seen_at = now(), bytes_to_client = v.to_client, bytes_to_upstream = v.to_upstream
         FROM unnest($1::uuid[], $2::varchar[], $3::bigint[], $4::bigint[]) AS v(id, reason, to_client, to_upstream)
        WHERE s.id = v.id`,
      [
        ends.map((end) => end.id),
        ends.map((end) => end.reason),
        ends.map((end) => end.bytesToClient),
        ends.map((end) => end.bytesToUpstream),
      ],
    );
  }

  /**
   * Ends at most `batchSize` live sessions whose proxy has not reported for `staleAfterMs` (it
   * died, or lost the database for that long), with reason `proxy lost`; returns how many. Rows
   * a concurrent writer holds are skipped, not waited for: the next run takes them. The pick is
   * an ARRAY(...) so that it runs once: as `IN (...)` the planner may run its LIMIT more than once.
   */
  async endLostBatch(staleAfterMs: number, batchSize: number): Promise<number> {
    return runCounted(
      this.pool,
      `UPDATE console_sessions SET ended_at = now(), close_reason = '${LOST_PROXY_REASON}'
        WHERE id = ANY(ARRAY(
          SELECT id FROM console_sessions
           WHERE ended_at IS NULL AND last_seen_at < now() - make_interval(secs => $1::float8 / 1000)
           LIMIT $2
           FOR UPDATE SKIP LOCKED))`,
      [staleAfterMs, batchSize],
    );
  }

  /**
   * Ends the live sessions recorded under this proxy name by an earlier run of the same proxy
   * (it was killed before it could write their ends), with reason `proxy restarted`; returns how
   * many. The caller must be sure no other running process records sessions under that name.
   */
  async endEarlierOfProxy(proxyInstance: string): Promise<number> {
    return runCounted(
      this.pool,
      `UPDATE console_sessions SET ended_at = now(), close_reason = '${RESTARTED_PROXY_REASON}'
        WHERE proxy_instance = $1 AND ended_at IS NULL`,
      [proxyInstance],
    );
  }

  async findById(id: string): Promise<ConsoleSessionEntity | null> {
    const { rows } = await this.pool.query<Record<string, unknown>>(
      `SELECT ${consoleSessionRows.selectList()} FROM console_sessions WHERE id = $1`,
      [id],
    );
    return rows.length === 0 ? null : consoleSessionRows.fromRow(rows[0]);
  }

  async list(filter: SessionListFilter): Promise<ConsoleSessionEntity[]> {
    const conditions: string[] = [];
    const parameters: unknown[] = [];
    if (filter.liveOnly) {
      conditions.push('ended_at IS NULL');
    }
    if (filter.instanceUuid !== undefined) {
      conditions.push(`instance_uuid = $${parameters.push(filter.instanceUuid)}`);
    }
    const where = conditions.length > 0 ? `WHERE ${conditions.join(' AND ')}` : '';
    const { rows } = await this.pool.query<Record<string, unknown>>(
      `SELECT ${consoleSessionRows.selectList()} FROM console_sessions ${where} ORDER BY started_at DESC LIMIT $${parameters.push(filter.limit)}`,
      parameters,
    );
    return rows.map((row) => consoleSessionRows.fromRow(row));
  }

  /** Live sessions on these console targets (exclusive-port status), of any type. */
  async listLiveOnTargets(targets: { host: string; port: number }[]): Promise<ConsoleSessionEntity[]> {
    if (targets.length === 0) {
      return [];
    }
    const { rows } = await this.pool.query<Record<string, unknown>>(
      `SELECT ${consoleSessionRows.selectList()} FROM console_sessions
        WHERE ended_at IS NULL AND (host, port) IN (SELECT * FROM unnest($1::varchar[], $2::int[]))`,
      [targets.map((t) => t.host), targets.map((t) => t.port)],
    );
    return rows.map((row) => consoleSessionRows.fromRow(row));
  }

  /**
   * Ends a live session on an operator's request and tells the proxies, in one transaction
   * (the notification is delivered at commit). Returns false when no live session has that id.
   */
  endByOperator(id: string): Promise<boolean> {
    return inTransaction(this.pool, async (client) => {
      const count = await runCounted(
        client,
        `UPDATE console_sessions SET ended_at = now(), close_reason = 'ended by operator' WHERE id = $1 AND ended_at IS NULL`,
        [id],
      );
      if (count === 0) {
        return false;
      }
      await notify(client, consoleEventPayloads({ kind: 'end-session', sessionIds: [id] }));
      return true;
    });
  }

  /** Of these sessions, the ids no longer live in the database (ended by an operator meanwhile). */
  async findEnded(ids: string[]): Promise<string[]> {
    if (ids.length === 0) {
      return [];
    }
    const { rows } = await this.pool.query<{ id: string }>(
      'SELECT id FROM console_sessions WHERE id = ANY($1::uuid[]) AND ended_at IS NOT NULL',
      [ids],
    );
    return rows.map((row) => row.id);
  }

  /** How many sessions with a token from the legacy store started since `since`. */
  async countLegacySince(since: Date): Promise<number> {
    const {
      rows: [{ count }],
    } = await this.pool.query<{ count: number }>(
      `SELECT count(*)::int AS count FROM console_sessions WHERE token_source = 'legacy' AND started_at >= $1`,
      [since],
    );
    return count;
  }

  /**
   * Deletes at most `batchSize` sessions that ended before `endedBefore`; returns how many. The
   * pick is an ARRAY(...), run once, as in `endLostBatch`: as `IN (...)` the planner may run its
   * LIMIT more than once and delete more than a batch in one statement.
   */
  async deleteEndedBatch(endedBefore: Date, batchSize: number): Promise<number> {
    return runCounted(
      this.pool,
      `DELETE FROM console_sessions WHERE id = ANY(ARRAY(
         SELECT id FROM console_sessions WHERE ended_at < $1 ORDER BY ended_at LIMIT $2 FOR UPDATE SKIP LOCKED))`,
      [endedBefore, batchSize],
    );
  }
}

/** Sends notifications on the console events channel inside the caller's transaction. */
export async function notify(client: PoolClient, payloads: string[]): Promise<void> {
  for (const payload of payloads) {
    await client.query('SELECT pg_notify($1, $2)', [CONSOLE_EVENTS_CHANNEL, payload]);
  }
}
