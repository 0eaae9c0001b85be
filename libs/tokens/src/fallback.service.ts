import { Inject, Injectable, Logger } from '@nestjs/common';
import { CellDatabases } from '@keyhole/cells';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { CLOCK, Clock, KeyholeError } from '@keyhole/core';
import { LEGACY_FALLBACK_SETTING } from '@keyhole/db';

export interface FallbackStatus {
  cell: string;
  /** What the cell's proxies do now: the forced value when forced, else the flag. */
  enabled: boolean;
  /** Set by KEYHOLE_LEGACY_FALLBACK; the flag cannot be changed then. */
  forced: boolean;
  /** The stored flag and its last change (null when never set: off). */
  flag: { enabled: boolean; changedBy: string; changedAt: string } | null;
  history: { enabled: boolean; changedBy: string; changedAt: string }[];
  /** Console sessions served with a legacy token in the last 24 hours: 0 for long means it can go off. */
  legacySessionsLast24h: number;
}

const HISTORY_ENTRIES = 10;

/**
 * The per-cell legacy fallback flag (Nova's [workarounds] enable_consoleauth, per cell and live):
 * stored in the cell's `cell_settings` with who changed it and when; every proxy of the cell follows
 * a change within a second (NOTIFY in the same transaction).
 */
@Injectable()
export class FallbackService {
  private readonly logger = new Logger(FallbackService.name);

  constructor(
    @Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig,
    @Inject(CLOCK) private readonly clock: Clock,
    private readonly databases: CellDatabases,
  ) {}

  async status(cellName: string): Promise<FallbackStatus> {
    const database = await this.databases.get(cellName);
    const history = (await database.settings.history(LEGACY_FALLBACK_SETTING, HISTORY_ENTRIES)).map((row) => ({
      enabled: (row.value as { enabled?: unknown }).enabled === true,
      changedBy: row.changedBy,
      changedAt: row.changedAt.toISOString(),
    }));
    const forced = this.config.legacy.forcedFallback;
    const since = new Date(this.clock.nowMs() - 24 * 3_600_000);
    return {
      cell: cellName,
      enabled: forced ?? history[0]?.enabled ?? false,
      forced: forced !== undefined,
      flag: history[0] ?? null,
      history,
      legacySessionsLast24h: await database.sessions.countLegacySince(since),
    };
  }

  /** Switches the flag; refused with FALLBACK_FORCED while configuration forces it. */
  async set(cellName: string, enabled: boolean, changedBy: string): Promise<FallbackStatus> {
    if (this.config.legacy.forcedFallback !== undefined) {
      throw new KeyholeError(
        'FALLBACK_FORCED',
        `The legacy fallback is forced ${this.config.legacy.forcedFallback ? 'on' : 'off'} by KEYHOLE_LEGACY_FALLBACK`,
        {
          details: { cell: cellName, forced: this.config.legacy.forcedFallback },
        },
      );
    }
    const database = await this.databases.get(cellName);
    await database.settings.set(LEGACY_FALLBACK_SETTING, { enabled }, changedBy.slice(0, 128));
    this.logger.log({ cell: cellName, enabled, changedBy }, 'legacy fallback flag set');
    return this.status(cellName);
  }
}
