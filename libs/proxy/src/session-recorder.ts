import { setTimeout as delay } from 'node:timers/promises';
import { Logger } from '@nestjs/common';
import { waitAtMost } from '@keyhole/core';
import { isRowDataError } from '@keyhole/db';
import type { ConsoleSessionRepository, NewConsoleSessionRow, SessionEnd, SessionRecord } from '@keyhole/db';

/** Rows per statement at most; a longer queue is written in several. */
const MAX_ROWS_PER_STATEMENT = 500;
/** Backoff between two attempts while the database does not take the writes: doubles up to the max. */
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5_000;

/** Why a session write was given up; the only values of the dropped counter's label. */
export type DroppedWriteReason = 'queue_full' | 'refused' | 'shutdown';

/** Where the recorder reports its queue (the proxy's metrics; no session or token in any label). */
export interface SessionWriteMetrics {
  /** Records and ends waiting to be written (or being written) now. */
  setPending(count: number): void;
  /** Rows written again after a failed attempt. */
  retried(count: number): void;
  dropped(reason: DroppedWriteReason, count: number): void;
}

export interface SessionRecorderOptions {
  /**
   * How long a session's row or end may wait for others before it is written (ms); default 20:
   * an operator sees a new session that much later than its browser does.
   */
  writeDelayMs?: number;
  /** Most records and ends kept at once (queued and being written); default 10000. */
  maxPending?: number;
  metrics?: SessionWriteMetrics;
}

interface PendingInsert {
  record: SessionRecord;
  /** Resolved once the row is written (or given up). */
  written: Deferred;
  /** Resolved once the session's end is written, when it ended before its row was. */
  ended?: Deferred;
}

interface PendingEnd {
  end: SessionEnd;
  written: Deferred;
}

/**
 * Writes the session records of non-exclusive consoles off the connect path, batched (one INSERT
 * and one UPDATE over arrays per write, one write out at a time): a session's row and its end wait
 * up to `writeDelayMs` for others and go with the next write, so the database sees a few
 * statements per window instead of a commit per connect and per end, and none of them is sent
 * while a browser's console is being opened. A session that ends before its row was written
 * (a connect that only probes the console) is inserted once, with its end. Whatever is queued
 * while a write is out goes in the next one. Exclusive consoles claim their row themselves
 * (`insertExclusive`, on the connect path) and only their end goes through here.
 *
 * A write the database does not take (unreachable, frozen, past its deadline) is put back at the
 * head of the queue and tried again with backoff until it lands, so that no session stays live in
 * the database after it ended here. Memory is bounded: past `maxPending` records and ends, the
 * newest are dropped (logged, counted), the oldest kept; whatever a killed proxy still held is
 * ended by its next start or by the reaper. A row the database refuses for its values (SQLSTATE
 * class 22 or 23) would never land: a failed batch of that kind is written row by row and only
 * the bad rows are given up.
 */
export class SessionRecorder {
  private readonly logger = new Logger(SessionRecorder.name);
  private inserts = new Map<string, PendingInsert>();
  private ends = new Map<string, PendingEnd>();
  /** Records and ends in the write that is out now. */
  private inFlight = 0;
  /** The write that is out now: the next starts when it is done. */
  private writing: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Failed attempts in a row; the next waits for the backoff they call for. */
  private failures = 0;
  /** Set when a flush gave up at its deadline (shutdown): nothing is tried again after it. */
  private closed = false;
  /** Dropped since the queue was last full; logged once when dropping starts and once when it stops. */
  private droppedWhileFull = 0;
  private readonly writeDelayMs: number;
  private readonly maxPending: number;
  private readonly metrics: SessionWriteMetrics | undefined;

  constructor(
    private readonly store: Pick<ConsoleSessionRepository, 'insertBatch' | 'endBatch'>,
    options: SessionRecorderOptions = {},
  ) {
    this.writeDelayMs = options.writeDelayMs ?? 20;
    this.maxPending = options.maxPending ?? 10_000;
    this.metrics = options.metrics;
  }

  /** Records and ends not yet written (queued or being written). */
  get pending(): number {
    return this.inserts.size + this.ends.size + this.inFlight;
  }

  /** Queues a session's row; resolves once it is written or given up (never rejects). */
  record(row: NewConsoleSessionRow): Promise<void> {
    if (!this.hasRoom()) {
      return Promise.resolve();
    }
    const pending: PendingInsert = { record: { ...row }, written: deferred() };
    this.inserts.set(row.id, pending);
    this.changed();
    return pending.written.promise;
  }

  /**
   * Queues a session's end (the row must have been queued or written before); resolves once it is
   * written or given up (never rejects).
   */
  end(end: SessionEnd): Promise<void> {
    const queued = this.inserts.get(end.id);
    if (queued) {
      // Not written yet: one insert records the whole session.
      queued.record.end = { reason: end.reason, bytesToClient: end.bytesToClient, bytesToUpstream: end.bytesToUpstream };
      queued.ended = deferred();
      return queued.ended.promise;
    }
    if (!this.hasRoom()) {
      return Promise.resolve();
    }
    const written = deferred();
    this.ends.set(end.id, { end, written });
    this.changed();
    return written.promise;
  }

  /**
   * Writes everything queued so far, retrying with backoff, until it has landed or `deadlineMs`
   * (Date.now() time) has passed; then gives up what is left (logged, counted). For a graceful
   * shutdown, within its drain deadline.
   */
  async flush(deadlineMs = Number.POSITIVE_INFINITY): Promise<void> {
    this.cancelSchedule();
    while (this.pending > 0 && Date.now() < deadlineMs) {
      if (this.writing) {
        await waitAtMost(this.writing, deadlineMs - Date.now());
      } else if (this.failures > 0) {
        await delay(Math.max(0, Math.min(this.backoffMs(), deadlineMs - Date.now())));
        if (!this.writing) {
          this.write();
        }
      } else {
        this.write();
      }
    }
    this.cancelSchedule();
    if (this.pending > 0) {
      // Past the deadline: no more attempts, not even for the write that is out now.
      this.closed = true;
      this.giveUpQueued();
    }
  }

  private hasRoom(): boolean {
    if (this.pending < this.maxPending) {
      if (this.droppedWhileFull > 0) {
        this.logger.warn({ dropped: this.droppedWhileFull }, 'the session write queue has room again');
        this.droppedWhileFull = 0;
      }
      return true;
    }
    if (this.droppedWhileFull === 0) {
      this.logger.error(
        { maxPending: this.maxPending },
        'the session write queue is full (the database has not taken writes for a while): newer session records are dropped',
      );
    }
    this.droppedWhileFull += 1;
    this.metrics?.dropped('queue_full', 1);
    return false;
  }

  private changed(): void {
    this.metrics?.setPending(this.pending);
    this.schedule();
  }

  /** Plans the next write: `writeDelayMs` after the first record queued since the last one, or after the backoff. */
  private schedule(): void {
    if (this.writing || this.timer !== undefined) {
      return;
    }
    if (this.inserts.size > 0 || this.ends.size > 0) {
      this.timer = setTimeout(this.scheduledWrite, this.failures > 0 ? this.backoffMs() : this.writeDelayMs);
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

  private backoffMs(): number {
    return Math.min(RETRY_MIN_MS * 2 ** (this.failures - 1), RETRY_MAX_MS);
  }

  /** Takes the queues and writes them; the next write starts when this one is done. */
  private write(): void {
    const inserts = take(this.inserts, MAX_ROWS_PER_STATEMENT);
    const ends = take(this.ends, MAX_ROWS_PER_STATEMENT);
    if (inserts.length === 0 && ends.length === 0) {
      return;
    }
    this.inFlight = inserts.length + ends.length;
    this.writing = Promise.all([this.writeInserts(inserts), this.writeEnds(ends)]).then(([insertsLanded, endsLanded]) => {
      this.writing = undefined;
      this.inFlight = 0;
      this.failures = insertsLanded && endsLanded ? 0 : this.failures + 1;
      if (this.closed) {
        this.giveUpQueued();
      } else {
        this.changed();
      }
    });
  }

  /** Resolves false when the rows must be tried again (they are back in the queue). */
  private async writeInserts(pending: PendingInsert[]): Promise<boolean> {
    if (pending.length === 0) {
      return true;
    }
    const landed = await this.writeRows(
      pending.map((entry) => entry.record),
      (records) => this.store.insertBatch(records),
      (record, error) => this.logger.warn({ err: error, sessionId: record.id }, 'could not record the session'),
    );
    if (!landed) {
      this.requeueInserts(pending);
      return false;
    }
    for (const entry of pending) {
      entry.written.resolve();
      entry.ended?.resolve();
    }
    return true;
  }

  private async writeEnds(pending: PendingEnd[]): Promise<boolean> {
    if (pending.length === 0) {
      return true;
    }
    const landed = await this.writeRows(
      pending.map((entry) => entry.end),
      (ends) => this.store.endBatch(ends),
      (end, error) => this.logger.warn({ err: error, sessionId: end.id }, 'could not record the end of a session'),
    );
    if (!landed) {
      this.ends = new Map([...pending.map((entry): [string, PendingEnd] => [entry.end.id, entry]), ...this.ends]);
      return false;
    }
    for (const entry of pending) {
      entry.written.resolve();
    }
    return true;
  }

  /**
   * Puts rows that did not land back at the head of the queue. An end queued for one of them
   * meanwhile (its row was being written) goes with it again, so that it is never written before
   * its row.
   */
  private requeueInserts(pending: PendingInsert[]): void {
    for (const entry of pending) {
      const end = this.ends.get(entry.record.id);
      if (end) {
        this.ends.delete(entry.record.id);
        const { reason, bytesToClient, bytesToUpstream } = end.end;
        entry.record.end = { reason, bytesToClient, bytesToUpstream };
        entry.ended = end.written;
      }
    }
    this.inserts = new Map([...pending.map((entry): [string, PendingInsert] => [entry.record.id, entry]), ...this.inserts]);
  }

  /**
   * One statement for all; resolves true once the rows landed or were given up, false when the
   * database could not be asked (they are to be tried again). If the database refused a value
   * (SQLSTATE class 22 or 23), one statement per row, so that only the bad rows are given up.
   */
  private async writeRows<T extends { id: string }>(
    rows: T[],
    write: (rows: T[]) => Promise<void>,
    refused: (row: T, error: unknown) => void,
  ): Promise<boolean> {
    try {
      await write(rows);
      return true;
    } catch (error) {
      if (!isRowDataError(error)) {
        if (this.failures === 0) {
          this.logger.warn({ err: error, rows: rows.length }, 'could not write session records; retrying until they land');
        }
        this.metrics?.retried(rows.length);
        return false;
      }
      if (rows.length === 1) {
        refused(rows[0], error);
        this.metrics?.dropped('refused', 1);
        return true;
      }
    }
    for (const row of rows) {
      try {
        await write([row]);
      } catch (error) {
        if (!isRowDataError(error)) {
          // The database went away meanwhile: the whole batch again (a row written twice is kept once).
          this.metrics?.retried(rows.length);
          return false;
        }
        refused(row, error);
        this.metrics?.dropped('refused', 1);
      }
    }
    return true;
  }

  /** Gives up everything still queued (shutdown past its deadline), resolving its waiters. */
  private giveUpQueued(): void {
    const inserts = take(this.inserts, Number.POSITIVE_INFINITY);
    const ends = take(this.ends, Number.POSITIVE_INFINITY);
    const count = inserts.length + ends.length;
    if (count === 0) {
      return;
    }
    this.logger.error(
      { records: inserts.length, ends: ends.length },
      'gave up session writes at shutdown: the database did not take them in time',
    );
    this.metrics?.dropped('shutdown', count);
    for (const entry of inserts) {
      entry.written.resolve();
      entry.ended?.resolve();
    }
    for (const entry of ends) {
      entry.written.resolve();
    }
    this.metrics?.setPending(this.pending);
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
