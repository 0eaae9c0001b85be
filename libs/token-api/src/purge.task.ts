import { Inject, Injectable, Logger, OnApplicationBootstrap } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import { CellsService } from '@keyhole/cells';
import { KEYHOLE_CONFIG, KeyholeConfig } from '@keyhole/config';
import { PurgeService } from '@keyhole/tokens';

/**
 * Every KEYHOLE_PURGE_INTERVAL_MS, purges every cell (one replica per cell wins its lock). A cell
 * that fails is logged and tried again next time; a run still going when the next is due is not
 * doubled.
 */
@Injectable()
export class PurgeTask implements OnApplicationBootstrap {
  private readonly logger = new Logger(PurgeTask.name);
  private running = false;

  constructor(
    @Inject(KEYHOLE_CONFIG) private readonly config: KeyholeConfig,
    private readonly scheduler: SchedulerRegistry,
    private readonly cells: CellsService,
    private readonly purge: PurgeService,
  ) {}

  onApplicationBootstrap(): void {
    if (this.config.purge.intervalMs === 0) {
      return;
    }
    const interval = setInterval(() => void this.runOnce(), this.config.purge.intervalMs);
    interval.unref();
    this.scheduler.addInterval('purge', interval);
  }

  /** One pass over every cell; resolves when done. */
  async runOnce(): Promise<void> {
    if (this.running) {
      return;
    }
    this.running = true;
    try {
      for (const cell of await this.cells.list()) {
        try {
          const result = await this.purge.purgeCell(cell.name);
          if (!result.ran) {
            this.logger.debug({ cell: cell.name }, 'purge skipped: another replica holds the lock');
          }
        } catch (error) {
          this.logger.error({ cell: cell.name, err: error }, 'purge failed; retrying at the next interval');
        }
      }
    } catch (error) {
      this.logger.error({ err: error }, 'purge could not list the cells; retrying at the next interval');
    } finally {
      this.running = false;
    }
  }
}
