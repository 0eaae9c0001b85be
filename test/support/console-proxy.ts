import { NestExpressApplication } from '@nestjs/platform-express';
import { Test } from '@nestjs/testing';
import { KeyholeConfig } from '@keyhole/config';
import { CLOCK, Clock } from '@keyhole/core';
import { configureConsoleProxyApp, proxyApplicationOptions, ProxyAppModule, ProxyRuntime } from '@keyhole/console-proxy';
import { testConfig } from './config';
import type { TestDeployment } from './deployment';
import { captureLogs } from './log-capture';

export interface RunningProxy {
  app: NestExpressApplication;
  runtime: ProxyRuntime;
  port: number;
  /** ws://127.0.0.1:PORT */
  wsBase: string;
  httpBase: string;
  logs: () => string;
  close: () => Promise<void>;
}

/** Boots the real console proxy of one cell (same module and HTTP setup as production) on a free port. */
export async function startConsoleProxy(config: KeyholeConfig, overrides: { clock?: Clock } = {}): Promise<RunningProxy> {
  const capture = captureLogs('keyhole-proxy');
  const builder = Test.createTestingModule({ imports: [ProxyAppModule.forRoot(config)] });
  if (overrides.clock) {
    builder.overrideProvider(CLOCK).useValue(overrides.clock);
  }
  const moduleRef = await builder.compile();
  const app = moduleRef.createNestApplication<NestExpressApplication>(proxyApplicationOptions(capture.logger));
  configureConsoleProxyApp(app, config, capture.logger);
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as { port: number };
  return {
    app,
    runtime: app.get(ProxyRuntime),
    port,
    wsBase: `ws://127.0.0.1:${port}`,
    httpBase: `http://127.0.0.1:${port}`,
    logs: capture.text,
    close: () => app.close(),
  };
}

/** The console proxy of a test deployment's cell1, with `environment` (KEYHOLE_*) on top of the cell's settings. */
export function startCell1Proxy(deployment: TestDeployment, environment: Record<string, string> = {}): Promise<RunningProxy> {
  return startConsoleProxy(
    testConfig(deployment.controlUrl, { KEYHOLE_CELL_NAME: 'cell1', KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1, ...environment }),
  );
}
