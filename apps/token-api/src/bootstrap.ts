import { LoggerService } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { NestExpressApplication } from '@nestjs/platform-express';
import { KeyholeConfig } from '@keyhole/config';
import { TokenApiModule } from './app.module';
import { RequestContextMiddleware } from './http/request-context.middleware';

/** Options Nest is created with; tests that override providers create the app with these too. */
export function nestApplicationOptions(logger: LoggerService) {
  return { bodyParser: false, logger, abortOnError: false } as const;
}

/** Builds the token API as production runs it. The caller listens. */
export async function createTokenApi(
  config: KeyholeConfig,
  logger: LoggerService,
  options: { handleSignals: boolean } = { handleSignals: true },
): Promise<NestExpressApplication> {
  const app = await NestFactory.create<NestExpressApplication>(TokenApiModule.forRoot(config), nestApplicationOptions(logger));
  configureTokenApi(app, config, logger);
  // A process that hosts several apps (the local deployment) handles signals itself.
  if (options.handleSignals) app.enableShutdownHooks(['SIGTERM', 'SIGINT']);
  return app;
}

/**
 * Everything the app needs besides its modules: JSON bodies up to the configured limit, proxy
 * trust. Tests that build the app from a testing module call this as well, so they
 * run the same HTTP stack as production.
 */
export function configureTokenApi(app: NestExpressApplication, config: KeyholeConfig, logger: LoggerService): NestExpressApplication {
  app.useLogger(logger);
  app.set('trust proxy', config.api.trustProxy);
  app.disable('x-powered-by');
  // Before the body parser, so requests it refuses still get a request id and an access line.
  const requestContext = new RequestContextMiddleware();
  app.use(requestContext.use.bind(requestContext));
  app.useBodyParser('json', { limit: config.api.bodyLimitBytes, strict: true });
  return app;
}
