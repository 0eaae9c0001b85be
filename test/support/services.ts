import { INestApplicationContext, Module } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { CellsModule } from '@keyhole/cells';
import { ConfigModule, KeyholeConfig } from '@keyhole/config';
import { CLOCK, Clock, CoreModule } from '@keyhole/core';
import { MetricsModule } from '@keyhole/observability';
import { CredentialsModule } from '@keyhole/credentials';
import { DbModule } from '@keyhole/db';
import { TOKEN_GENERATOR, TokenGenerator, TokensModule } from '@keyhole/tokens';
import { captureLogs } from './log-capture';

/** The libs wired as the apps wire them, without HTTP, for integration tests of the services. */
export async function startServices(
  config: KeyholeConfig,
  overrides: { clock?: Clock; tokenGenerator?: TokenGenerator } = {},
): Promise<{ app: INestApplicationContext; logs: () => string }> {
  @Module({
    imports: [
      ConfigModule.forRoot(config),
      CoreModule,
      MetricsModule,
      DbModule.forControl('keyhole-test'),
      CellsModule,
      TokensModule,
      CredentialsModule,
    ],
  })
  class ServicesModule {}

  const builder = Test.createTestingModule({ imports: [ServicesModule] });
  if (overrides.clock) {
    builder.overrideProvider(CLOCK).useValue(overrides.clock);
  }
  if (overrides.tokenGenerator) {
    builder.overrideProvider(TOKEN_GENERATOR).useValue(overrides.tokenGenerator);
  }
  const capture = captureLogs();
  const moduleRef = await builder.setLogger(capture.logger).compile();
  const app = await moduleRef.init();
  return { app, logs: capture.text };
}
