import { Counter, Registry } from 'prom-client';
import type { DeadlineStage } from './postgres-errors';

/** Metrics of the app's database pools. */
export class DatabaseMetrics {
  private readonly deadlinesExceeded: Counter<'database' | 'stage'>;

  constructor(registry: Registry) {
    this.deadlinesExceeded = new Counter({
      name: 'keyhole_db_deadline_exceeded_total',
      help: 'Database operations that missed a client-side deadline, by database (control or the cell name) and stage (connect: opening or waiting for a connection; query: a statement, whose connection was thrown away)',
      labelNames: ['database', 'stage'],
      registers: [registry],
    });
  }

  /** createPool's `onDeadlineExceeded` for the pool of `database` (`control` or a cell name). */
  deadlineCounter(database: string): (stage: DeadlineStage) => void {
    return (stage) => this.deadlinesExceeded.inc({ database, stage });
  }
}
