import { Global, Module } from '@nestjs/common';
import { CLOCK, systemClock } from './clock';

/** Provides the system clock; tests override `CLOCK` with a `ManualClock`. */
@Global()
@Module({
  providers: [{ provide: CLOCK, useValue: systemClock }],
  exports: [CLOCK],
})
export class CoreModule {}
