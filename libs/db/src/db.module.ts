import { DynamicModule, Module } from '@nestjs/common';
import { Registry } from 'prom-client';
import { APPLICATION_NAME, ControlDatabase } from './control-database';
import { DatabaseMetrics } from './database.metrics';

/** The control database for an app; `applicationName` shows in pg_stat_activity. Needs `MetricsModule`. */
@Module({})
export class DbModule {
  static forControl(applicationName: string): DynamicModule {
    return {
      module: DbModule,
      global: true,
      providers: [
        { provide: APPLICATION_NAME, useValue: applicationName },
        { provide: DatabaseMetrics, useFactory: (registry: Registry) => new DatabaseMetrics(registry), inject: [Registry] },
        ControlDatabase,
      ],
      exports: [ControlDatabase, APPLICATION_NAME, DatabaseMetrics],
    };
  }
}
