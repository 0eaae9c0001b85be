import { setTimeout as delay } from 'node:timers/promises';
import { Inject, Injectable, Logger } from '@nestjs/common';
import { Counter, Histogram, Registry } from 'prom-client';
import { CellDatabases } from '@keyhole/cells';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { CLOCK, Clock, nowSeconds } from '@keyhole/core';
import { runAsLeader } from '@keyhole/db';

// A fixed key per cell database (each cell has its own database, so one key suffices).
const PURGE_LOCK_KEY = 0x6b68_7075_7267; // "khpurg"

export interface PurgeResult {
  cell: string;
  /** False when another replica held the cell's purge lock; nothing was deleted then. */
  ran: boolean;
  tokens: number;
  sessions: number;
  durationMs: number;
}

/**
 * Keeps every cell database small: deletes expired tokens (`expires <= now`, Nova's boundary),
 * then sessions that ended longer ago than the retention, in bounded batches through their
 * indexes, so token checks and issuing never wait on it. One replica per cell runs it at a time:
 * the run holds a PostgreSQL advisory lock on the cell database for its duration (`runAsLeader`).
 */
@Injectable()
export class PurgeService {
  private readonly logger = new Logger(PurgeService.name);
  private readonly rows: Counter<'cell' | 'kind'>;
  private readonly seconds: Histogram<'cell'>;

  constructor(
    @Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig,
    @Inject(CLOCK) private readonly clock: Clock,
    private readonly databases: CellDatabases,
    registry: Registry,
  ) {
    this.rows = new Counter({
      name: 'keyhole_purge_rows_total',
      help: 'Rows deleted by purges, by cell and kind (tokens, sessions)',
      labelNames: ['cell', 'kind'],
      registers: [registry],
    });
    this.seconds = new Histogram({
      name: 'keyhole_purge_duration_seconds',
      help: 'Duration of purge runs that held the lock',
      labelNames: ['cell'],
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300],
      registers: [registry],
    });
  }

  /** One purge run of a cell, optionally of one console host's expired tokens only (no sessions then). */
  async purgeCell(cellName: string, options: { host?: string } = {}): Promise<PurgeResult> {
    const database = await this.databases.get(cellName);
    const startedAt = process.hrtime.bigint();
    const run = await runAsLeader(database.pool, PURGE_LOCK_KEY, async () => {
      const batchSize = this.config.tokens.purgeBatchSize;
      const now = nowSeconds(this.clock);
      const tokens = await this.inBatches(batchSize, () => database.tokens.deleteExpiredBatch(now, batchSize, options.host));
      // Tombstones of revoked tokens outlive nothing: once the token would have expired, they go.
      if (options.host === undefined) {
        await this.inBatches(batchSize, () => database.tokens.deleteExpiredTombstonesBatch(now, batchSize));
        // So do keyhole's extras of expired tokens, also of those that Nova's own cleanups deleted.
        await this.inBatches(batchSize, () => database.tokens.deleteExpiredExtrasBatch(now, batchSize));
      }
      let sessions = 0;
      if (options.host === undefined && this.config.purge.sessionRetentionMs > 0) {
        const endedBefore = new Date(this.clock.nowMs() - this.config.purge.sessionRetentionMs);
        sessions = await this.inBatches(batchSize, () => database.sessions.deleteEndedBatch(endedBefore, batchSize));
      }
      return { tokens, sessions };
    });
    if (!run.ran) {
      return { cell: cellName, ran: false, tokens: 0, sessions: 0, durationMs: 0 };
    }
    const { tokens, sessions } = run.result;
    const durationMs = Number(process.hrtime.bigint() - startedAt) / 1e6;
    this.rows.inc({ cell: cellName, kind: 'tokens' }, tokens);
    this.rows.inc({ cell: cellName, kind: 'sessions' }, sessions);
    this.seconds.observe({ cell: cellName }, durationMs / 1000);
    this.logger.log({ cell: cellName, host: options.host, tokens, sessions, durationMs: Math.round(durationMs) }, 'purge done');
    return { cell: cellName, ran: true, tokens, sessions, durationMs };
  }

  /**
   * Runs `deleteBatch` until a batch deletes fewer than `batchSize` rows, pausing
   * KEYHOLE_PURGE_PAUSE_MS between batches when set (a purge of a million rows back to back keeps
   * one core of the database busy for seconds). Returns the rows deleted.
   */
  private async inBatches(batchSize: number, deleteBatch: () => Promise<number>): Promise<number> {
    let total = 0;
    for (;;) {
      const deleted = await deleteBatch();
      total += deleted;
      if (deleted < batchSize) {
        return total;
      }
      if (this.config.purge.pauseMs > 0) {
        await delay(this.config.purge.pauseMs);
      }
    }
  }
}
