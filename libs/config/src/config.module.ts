import { DynamicModule, Global, Module } from '@nestjs/common';
import { KEYHOLE_CONFIG, KeyholeConfig } from './keyhole.config';

/** Makes the already-validated configuration injectable as `KEYHOLE_CONFIG`. */
@Global()
@Module({})
export class ConfigModule {
  static forRoot(config: KeyholeConfig): DynamicModule {
    return {
      module: ConfigModule,
      providers: [{ provide: KEYHOLE_CONFIG, useValue: config }],
      exports: [KEYHOLE_CONFIG],
    };
  }
}
