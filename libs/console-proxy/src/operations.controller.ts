import { Controller, Get, Header, HttpCode, Logger, Res } from '@nestjs/common';
import type { Response } from 'express';
import { sendFixedError } from '@keyhole/web-clients';
import { ProxyRuntime } from './proxy-runtime';
import { clusterMetricsText, isProxyWorker } from './workers';

/** Liveness, readiness (cell database and its keyhole schema, revocation channel) and Prometheus metrics. */
@Controller()
export class OperationsController {
  private readonly logger = new Logger('ConsoleProxy');

  constructor(private readonly runtime: ProxyRuntime) {}

  @Get('healthz')
  @HttpCode(200)
  live() {
    return { status: 'ok' };
  }

  @Get('readyz')
  async ready(@Res({ passthrough: true }) response: Response) {
    const database = await this.runtime.checkCellDatabase();
    const ready = database.reachable && database.schemaComplete && this.runtime.proxy.ready;
    response.status(ready ? 200 : 503);
    return {
      status: ready ? 'ready' : 'unavailable',
      cell: this.runtime.cellName,
      cellDatabase: database.reachable,
      cellSchema: database.schemaComplete,
      ...(database.problems.length > 0 ? { cellSchemaProblems: database.problems, fix: 'keyhole migrate' } : {}),
      ...(database.strandedTokens > 0 ? { strandedTokens: database.strandedTokens } : {}),
      listening: this.runtime.proxy.ready,
      liveSessions: this.runtime.proxy.liveSessions,
    };
  }

  @Get('metrics')
  @Header('Cache-Control', 'no-store')
  async metrics(@Res() response: Response): Promise<void> {
    // A scrape lands on one worker; with several, the supervisor sums them all.
    let text: string;
    try {
      text = isProxyWorker() ? await clusterMetricsText() : await this.runtime.metrics.registry.metrics();
    } catch (error) {
      this.logger.error({ err: error }, 'could not collect the metrics');
      sendFixedError(response, 503);
      return;
    }
    response.setHeader('Content-Type', this.runtime.metrics.registry.contentType);
    response.send(text);
  }
}
