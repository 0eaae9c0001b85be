import { Logger } from '@nestjs/common';
import { SchedulerRegistry } from '@nestjs/schedule';
import { CellsService } from '@keyhole/cells';

/** One leader-elected job over one cell; `ran` is false when another replica held the cell's lock. */
export type CellJob = (cellName: string) => Promise<{ ran: boolean }>;

/**
 * Runs `job` over every cell every `intervalMs` (0 = never), under the scheduler's `name`. A cell
 * that fails is logged and tried again next time; a pass still going when the next is due is not
 * doubled. Returns the function that runs one pass (resolves when done), for tests and the CLI.
 */
export function scheduleEveryCell(
  scheduler: SchedulerRegistry,
  cells: CellsService,
  name: string,
  intervalMs: number,
  job: CellJob,
): () => Promise<void> {
  const logger = new Logger(`${name} schedule`);
  let running = false;
  const runOnce = async (): Promise<void> => {
    if (running) {
      return;
    }
    running = true;
    try {
      for (const cell of await cells.list()) {
        try {
          const result = await job(cell.name);
          if (!result.ran) {
            logger.debug({ cell: cell.name }, `${name} skipped: another replica holds the lock`);
          }
        } catch (error) {
          logger.error({ cell: cell.name, err: error }, `${name} failed; retrying at the next interval`);
        }
      }
    } catch (error) {
      logger.error({ err: error }, `${name} could not list the cells; retrying at the next interval`);
    } finally {
      running = false;
    }
  };
  if (intervalMs > 0) {
    const interval = setInterval(() => void runOnce(), intervalMs);
    interval.unref();
    scheduler.addInterval(name, interval);
  }
  return runOnce;
}
