import { Logger } from '@nestjs/common';
import { isRowDataError } from '@keyhole/db';
import type { ConsoleSessionRepository, NewConsoleSessionRow, SessionEnd, SessionRecord } from '@keyhole/db';

/** Rows per statement at most; a longer queue is written in several. */
const MAX_ROWS_PER_STATEMENT = 500;

interface PendingInsert {
  record: SessionRecord;
  /** Resolved once the row is written (or could not be). */
  written: Deferred;
  /** Resolved once the session's end is written, when it ended before its row was. */
  ended?: Deferred;
}

/**
 * Writes the session records of non-exclusive consoles off the connect path, batched (one INSERT
 * and one UPDATE over arrays per write, one write out at a time): a session's row and its end wait
 * up to `writeDelayMs` for others and go with the next write, so the database sees a few
 * statements per window instead of a commit per connect and per end, and none of them is sent
 * while a browser's console is being opened. A session that ends before its row was written
 * (a connect that only probes the console) is inserted once, with its end. Whatever is queued
 * while a write is out goes in the next one. Writes are never retried (a lost record is logged,
 * as before); a failed batch is written row by row so that one bad row does not lose the others.
 * Exclusive consoles claim their row themselves (`insertExclusive`, on the connect path) and
 * only their end goes through here.
 */
export class SessionRecorder {
  private readonly logger = new Logger(SessionRecorder.name);
  private inserts = new Map<string, PendingInsert>();
  private ends = new Map<string, { end: SessionEnd; written: Deferred }>();
  /** Sessions whose row is in the write that is out now: their end waits for the next one. */
  private writing: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;

  /**
   * @param writeDelayMs how long a session's row or end may wait for others before it is written
   *   (ms); default 20: an operator sees a new session that much later than its browser does.
   */
  constructor(
    private readonly store: Pick<ConsoleSessionRepository, 'insertBatch' | 'endBatch'>,
    private readonly writeDelayMs = 20,
  ) {}

  /** Queues a session's row; resolves once it is written or could not be (never rejects). */
  record(row: NewConsoleSessionRow): Promise<void> {
    const pending: PendingInsert = { record: { ...row }, written: deferred() };
    this.inserts.set(row.id, pending);
    this.schedule();
    return pending.written.promise;
  }

  /**
   * Queues a session's end (the row must have been queued or written before); resolves once it is
   * written or could not be (never rejects).
   */
  end(end: SessionEnd): Promise<void> {
    const queued = this.inserts.get(end.id);
    if (queued) {
      // Not written yet: one insert records the whole session.
      queued.record.end = { reason: end.reason, bytesToClient: end.bytesToClient, bytesToUpstream: end.bytesToUpstream };
      queued.ended = deferred();
      return queued.ended.promise;
    }
    const written = deferred();
    this.ends.set(end.id, { end, written });
    this.schedule();
    return written.promise;
  }

  /** Resolves once everything queued so far is written (or could not be). */
  async flush(): Promise<void> {
    this.cancelSchedule();
    while (this.writing || this.inserts.size > 0 || this.ends.size > 0) {
      if (this.writing) {
        await this.writing;
      } else {
        this.write();
      }
    }
  }

  /** Plans the next write, `writeDelayMs` after the first record queued since the last one. */
  private schedule(): void {
    if (this.writing || this.timer !== undefined) {
      return;
    }
    if (this.inserts.size > 0 || this.ends.size > 0) {
      this.timer = setTimeout(this.scheduledWrite, this.writeDelayMs);
    }
  }

  private readonly scheduledWrite = (): void => {
    this.cancelSchedule();
    if (!this.writing) {
      this.write();
    }
  };

  private cancelSchedule(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Takes the queues and writes them; the next write starts when this one is done. */
  private write(): void {
    const inserts = take(this.inserts, MAX_ROWS_PER_STATEMENT);
    const ends = take(this.ends, MAX_ROWS_PER_STATEMENT);
    if (inserts.length === 0 && ends.length === 0) {
      return;
    }
    this.writing = Promise.all([this.writeInserts(inserts), this.writeEnds(ends)]).then(() => {
      this.writing = undefined;
      if (this.inserts.size > 0 || this.ends.size > 0) {
        this.schedule();
      }
    });
  }

  private async writeInserts(pending: PendingInsert[]): Promise<void> {
    if (pending.length === 0) {
      return;
    }
    await this.writeRows(
      pending.map((entry) => entry.record),
      (records) => this.store.insertBatch(records),
      (record, error) => this.logger.warn({ err: error, sessionId: record.id }, 'could not record the session'),
    );
    for (const entry of pending) {
      entry.written.resolve();
      entry.ended?.resolve();
    }
  }

  private async writeEnds(pending: { end: SessionEnd; written: Deferred }[]): Promise<void> {
    if (pending.length === 0) {
      return;
    }
    await this.writeRows(
      pending.map((entry) => entry.end),
      (ends) => this.store.endBatch(ends),
      (end, error) => this.logger.warn({ err: error, sessionId: end.id }, 'could not record the end of a session'),
    );
    for (const entry of pending) {
      entry.written.resolve();
    }
  }

  /**
   * One statement for all. If the database refused a value (SQLSTATE class 22 or 23), one per row,
   * so that only the bad rows are lost; any other failure (database unreachable) loses them all
   * at once instead of waiting once per row.
   */
  private async writeRows<T extends { id: string }>(
    rows: T[],
    write: (rows: T[]) => Promise<void>,
    lost: (row: T, error: unknown) => void,
  ): Promise<void> {
    try {
      await write(rows);
      return;
    } catch (error) {
      if (rows.length === 1 || !isRowDataError(error)) {
        for (const row of rows) {
          lost(row, error);
        }
        return;
      }
    }
    for (const row of rows) {
      await write([row]).catch((error: unknown) => lost(row, error));
    }
  }
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((done) => (resolve = done));
  return { promise, resolve };
}

/** Removes and returns up to `limit` values of a map, oldest first. */
function take<V>(map: Map<string, V>, limit: number): V[] {
  const taken: V[] = [];
  for (const [key, value] of map) {
    if (taken.length === limit) {
      break;
    }
    taken.push(value);
    map.delete(key);
  }
  return taken;
}
