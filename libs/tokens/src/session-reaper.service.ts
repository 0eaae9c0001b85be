import { Inject, Injectable, Logger } from '@nestjs/common';
import { Counter, Registry } from 'prom-client';
import { CellDatabases } from '@keyhole/cells';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { runAsLeader } from '@keyhole/db';

// Not the purge's key: a long purge must not hold back the reaper of the same cell.
const REAPER_LOCK_KEY = 0x6b68_7265_6170; // "khreap"
/** Rows ended per statement; a larger backlog (a proxy of thousands of sessions died) takes several. */
const REAP_BATCH_SIZE = 1_000;

export interface ReapResult {
  cell: string;
  /** False when another replica held the cell's reaper lock; nothing was ended then. */
  ran: boolean;
  sessions: number;
}

/**
 * Ends the sessions whose proxy stopped reporting: a live row whose heartbeat
 * (`last_seen_at`) is older than KEYHOLE_PROXY_SESSION_STALE_MS belongs to a proxy that was
 * killed, or that has not reached the database for that long, and is ended with reason
 * `proxy lost`, so that the list of live sessions is true. Ended rows are then purged like any
 * other. One replica per cell runs it at a time, elected like the purge (`runAsLeader`).
 */
@Injectable()
export class SessionReaperService {
  private readonly logger = new Logger(SessionReaperService.name);
  private readonly reaped: Counter<'cell'>;

  constructor(
    @Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig,
    private readonly databases: CellDatabases,
    registry: Registry,
  ) {
    this.reaped = new Counter({
      name: 'keyhole_sessions_reaped_total',
      help: 'Live sessions ended by the reaper because their proxy stopped reporting, by cell',
      labelNames: ['cell'],
      registers: [registry],
    });
  }

  /** One reaper run over a cell. */
  async reapCell(cellName: string): Promise<ReapResult> {
    const database = await this.databases.get(cellName);
    const staleAfterMs = this.config.proxy.sessionStaleMs;
    const run = await runAsLeader(database.pool, REAPER_LOCK_KEY, async () => {
      let total = 0;
      for (;;) {
        const ended = await database.sessions.endLostBatch(staleAfterMs, REAP_BATCH_SIZE);
        total += ended;
        if (ended < REAP_BATCH_SIZE) {
          return total;
        }
      }
    });
    if (!run.ran) {
      return { cell: cellName, ran: false, sessions: 0 };
    }
    if (run.result > 0) {
      this.reaped.inc({ cell: cellName }, run.result);
      this.logger.warn({ cell: cellName, sessions: run.result, staleAfterMs }, 'ended live sessions whose proxy stopped reporting');
    }
    return { cell: cellName, ran: true, sessions: run.result };
  }
}
