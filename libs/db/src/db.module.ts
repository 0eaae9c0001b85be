import { DynamicModule, Module } from '@nestjs/common';
import { APPLICATION_NAME, ControlDatabase } from './control-database';

/** The control database for an app; `applicationName` shows in pg_stat_activity. */
@Module({})
export class DbModule {
  static forControl(applicationName: string): DynamicModule {
    return {
      module: DbModule,
      global: true,
      providers: [{ provide: APPLICATION_NAME, useValue: applicationName }, ControlDatabase],
      exports: [ControlDatabase, APPLICATION_NAME],
    };
  }
}
