import { DataSource, EntityManager } from 'typeorm';
import { ConsoleSessionEntity } from './console-session.entity';
import { CONSOLE_EVENTS_CHANNEL, consoleEventPayloads } from './console-events';

export type NewConsoleSessionRow = Pick<
  ConsoleSessionEntity,
  'id' | 'tokenId' | 'tokenSource' | 'tokenFingerprint' | 'instanceUuid' | 'consoleType' | 'host' | 'port' | 'proxyInstance' | 'clientAddress'
>;

export interface SessionCounters {
  id: string;
  bytesToClient: number;
  bytesToUpstream: number;
}

export interface SessionListFilter {
  liveOnly: boolean;
  instanceUuid?: string;
  limit: number;
}

/** `console_sessions` of one cell: one row per proxied connection. */
export class ConsoleSessionRepository {
  constructor(
    readonly cellName: string,
    private readonly dataSource: DataSource,
  ) {}

  /** Records a session that does not need its console to itself. */
  async insert(row: NewConsoleSessionRow): Promise<void> {
    await this.dataSource.getRepository(ConsoleSessionEntity).insert(row);
  }

  /**
   * Records a session only if no other live session of the same console type uses the same
   * host:port (exclusive consoles such as serial ports), across every proxy of the cell: the check and the insert run under a
   * transaction-scoped advisory lock on the target. A live session whose proxy has not reported
   * for `staleAfterMs` is taken as dead (its proxy crashed) and ended first. Returns the id of the
   * session holding the console, or null when this one was recorded.
   */
  insertExclusive(row: NewConsoleSessionRow, staleAfterMs: number): Promise<string | null> {
    return this.dataSource.transaction(async (manager) => {
      await manager.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`console:${row.host}:${row.port}`]);
      await manager.query(
        `UPDATE console_sessions SET ended_at = now(), close_reason = 'proxy lost'
          WHERE host = $1 AND port = $2 AND console_type = $3 AND ended_at IS NULL
            AND last_seen_at < now() - make_interval(secs => $4::float8 / 1000)`,
        [row.host, row.port, row.consoleType, staleAfterMs],
      );
      const holders = await manager.query<{ id: string }[]>(
        'SELECT id FROM console_sessions WHERE host = $1 AND port = $2 AND console_type = $3 AND ended_at IS NULL LIMIT 1',
        [row.host, row.port, row.consoleType],
      );
      if (holders.length > 0) return holders[0].id;
      await manager.getRepository(ConsoleSessionEntity).insert(row);
      return null;
    });
  }

  /** Marks these live sessions as seen now, with their byte counts so far (one statement). */
  async heartbeat(sessions: SessionCounters[]): Promise<void> {
    if (sessions.length === 0) return;
    await this.dataSource.query(
      `UPDATE console_sessions s
          SET last_seen_at = now(), bytes_to_client = v.to_client, bytes_to_upstream = v.to_upstream
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS v(id, to_client, to_upstream)
        WHERE s.id = v.id AND s.ended_at IS NULL`,
      [sessions.map((s) => s.id), sessions.map((s) => s.bytesToClient), sessions.map((s) => s.bytesToUpstream)],
    );
  }

  /** Records the end of a session; a reason already set (by an operator) is kept. */
  async end(counters: SessionCounters, reason: string): Promise<void> {
    await this.dataSource.query(
      `UPDATE console_sessions
          SET ended_at = COALESCE(ended_at, now()), close_reason = COALESCE(close_reason, $2),
              last_seen_at = now(), bytes_to_client = $3, bytes_to_upstream = $4
        WHERE id = $1`,
      [counters.id, reason, counters.bytesToClient, counters.bytesToUpstream],
    );
  }

  findById(id: string): Promise<ConsoleSessionEntity | null> {
    return this.dataSource.getRepository(ConsoleSessionEntity).findOneBy({ id });
  }

  list(filter: SessionListFilter): Promise<ConsoleSessionEntity[]> {
    const query = this.dataSource
      .getRepository(ConsoleSessionEntity)
      .createQueryBuilder('s')
      .orderBy('s.started_at', 'DESC')
      .limit(filter.limit);
    if (filter.liveOnly) query.andWhere('s.ended_at IS NULL');
    if (filter.instanceUuid !== undefined) query.andWhere('s.instance_uuid = :instanceUuid', { instanceUuid: filter.instanceUuid });
    return query.getMany();
  }

  /** Live sessions on these console targets (exclusive-port status), of any type. */
  listLiveOnTargets(targets: { host: string; port: number }[]): Promise<ConsoleSessionEntity[]> {
    if (targets.length === 0) return Promise.resolve([]);
    return this.dataSource
      .getRepository(ConsoleSessionEntity)
      .createQueryBuilder('s')
      .where('s.ended_at IS NULL')
      .andWhere('(s.host, s.port) IN (SELECT * FROM unnest(:hosts::varchar[], :ports::int[]))', {
        hosts: targets.map((t) => t.host),
        ports: targets.map((t) => t.port),
      })
      .getMany();
  }

  /**
   * Ends a live session on an operator's request and tells the proxies, in one transaction
   * (the notification is delivered at commit). Returns false when no live session has that id.
   */
  endByOperator(id: string): Promise<boolean> {
    return this.dataSource.transaction(async (manager) => {
      const [, count] = await manager.query<[unknown[], number]>(
        `UPDATE console_sessions SET ended_at = now(), close_reason = 'ended by operator' WHERE id = $1 AND ended_at IS NULL`,
        [id],
      );
      if (count === 0) return false;
      await notify(manager, consoleEventPayloads({ kind: 'end-session', sessionIds: [id] }));
      return true;
    });
  }

  /** Of these sessions, the ids no longer live in the database (ended by an operator meanwhile). */
  async findEnded(ids: string[]): Promise<string[]> {
    if (ids.length === 0) return [];
    const rows = await this.dataSource.query<{ id: string }[]>(
      'SELECT id FROM console_sessions WHERE id = ANY($1::uuid[]) AND ended_at IS NOT NULL',
      [ids],
    );
    return rows.map((row) => row.id);
  }

  /** How many sessions with a token from the legacy store started since `since`. */
  async countLegacySince(since: Date): Promise<number> {
    const [{ count }] = await this.dataSource.query<{ count: number }[]>(
      `SELECT count(*)::int AS count FROM console_sessions WHERE token_source = 'legacy' AND started_at >= $1`,
      [since],
    );
    return count;
  }

  /** Deletes at most `batchSize` sessions that ended before `endedBefore`; returns how many. */
  async deleteEndedBatch(endedBefore: Date, batchSize: number): Promise<number> {
    const [, count] = await this.dataSource.query<[unknown[], number]>(
      `DELETE FROM console_sessions WHERE id IN (
         SELECT id FROM console_sessions WHERE ended_at < $1 ORDER BY ended_at LIMIT $2 FOR UPDATE SKIP LOCKED)`,
      [endedBefore, batchSize],
    );
    return count;
  }
}

/** Sends notifications on the console events channel inside the caller's transaction. */
export async function notify(manager: EntityManager, payloads: string[]): Promise<void> {
  for (const payload of payloads) await manager.query('SELECT pg_notify($1, $2)', [CONSOLE_EVENTS_CHANNEL, payload]);
}
