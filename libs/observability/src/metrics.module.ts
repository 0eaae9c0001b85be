import { Global, Module } from '@nestjs/common';
import { collectDefaultMetrics, Registry } from 'prom-client';

/** The process's Prometheus registry (one per app instance, so tests can run several in one process). */
@Global()
@Module({
  providers: [
    {
      provide: Registry,
      useFactory: () => {
        const registry = new Registry();
        collectDefaultMetrics({ register: registry, prefix: 'keyhole_process_' });
        return registry;
      },
    },
  ],
  exports: [Registry],
})
export class MetricsModule {}
