import { DynamicModule, Module } from '@nestjs/common';
import { ConfigModule, KeyholeConfig } from '@keyhole/config';
import { CoreModule } from '@keyhole/core';
import { LegacyStoreModule } from '@keyhole/legacy-store';
import { UpstreamModule } from '@keyhole/upstream';
import { OperationsController } from './operations.controller';
import { ProxyRuntime } from './proxy-runtime';

/** The console proxy of one cell: wiring only. */
@Module({})
export class ProxyAppModule {
  static forRoot(config: KeyholeConfig): DynamicModule {
    return {
      module: ProxyAppModule,
      imports: [ConfigModule.forRoot(config), CoreModule, LegacyStoreModule, UpstreamModule],
      controllers: [OperationsController],
      providers: [ProxyRuntime],
      exports: [ProxyRuntime],
    };
  }
}
