import { Controller, Get, Header, HttpCode, Res } from '@nestjs/common';
import type { Response } from 'express';
import { ProxyRuntime } from './proxy-runtime';

/** Liveness, readiness (cell database and revocation channel) and Prometheus metrics. */
@Controller()
export class OperationsController {
  constructor(private readonly runtime: ProxyRuntime) {}

  @Get('healthz')
  @HttpCode(200)
  live() {
    return { status: 'ok' };
  }

  @Get('readyz')
  async ready(@Res({ passthrough: true }) response: Response) {
    const database = await this.runtime.cell.dataSource.query('SELECT 1').then(
      () => true,
      () => false,
    );
    const ready = database && this.runtime.proxy.ready;
    response.status(ready ? 200 : 503);
    return { status: ready ? 'ready' : 'unavailable', cell: this.runtime.cellName, cellDatabase: database, listening: this.runtime.proxy.ready, liveSessions: this.runtime.proxy.liveSessions };
  }

  @Get('metrics')
  @Header('Cache-Control', 'no-store')
  async metrics(@Res() response: Response): Promise<void> {
    response.setHeader('Content-Type', this.runtime.metrics.registry.contentType);
    response.send(await this.runtime.metrics.registry.metrics());
  }
}
