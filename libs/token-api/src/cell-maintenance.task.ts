import { Inject, Injectable, OnApplicationBootstrap } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import { CellsService } from '@keyhole/cells';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { PurgeService, SessionReaperService } from '@keyhole/tokens';
import { scheduleEveryCell } from './every-cell';

/**
 * The token API's schedule over every cell, each job leader-elected per cell (one replica runs it):
 * the purge every KEYHOLE_PURGE_INTERVAL_MS, and the reaper of sessions whose proxy stopped
 * reporting every KEYHOLE_SESSION_REAP_INTERVAL_MS.
 */
@Injectable()
export class CellMaintenanceTask implements OnApplicationBootstrap {
  constructor(
    @Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig,
    private readonly scheduler: SchedulerRegistry,
    private readonly cells: CellsService,
    private readonly purge: PurgeService,
    private readonly reaper: SessionReaperService,
  ) {}

  onApplicationBootstrap(): void {
    scheduleEveryCell(this.scheduler, this.cells, 'purge', this.config.purge.intervalMs, (cell) => this.purge.purgeCell(cell));
    scheduleEveryCell(this.scheduler, this.cells, 'session reaper', this.config.purge.sessionReapIntervalMs, (cell) =>
      this.reaper.reapCell(cell),
    );
  }
}
