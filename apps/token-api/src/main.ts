import 'reflect-metadata';
import { ConfigurationError, loadConfig, requireControlUrl } from '@keyhole/config';
import { createLogger, PinoNestLogger } from '@keyhole/observability';
import { createTokenApi } from '@keyhole/token-api';

async function main(): Promise<void> {
  const config = loadConfig();
  requireControlUrl(config);
  // Two lines per issued token: written in groups, at least every 250 ms, not one write each.
  const logger = createLogger({ level: config.log.level, name: 'keyhole-api', flushIntervalMs: 250 });
  const app = await createTokenApi(config, new PinoNestLogger(logger));
  await app.listen(config.api.port, config.api.host);
  const address = app.getHttpServer().address();
  const port = typeof address === 'object' && address ? address.port : config.api.port;
  const tls = config.api.tls ? (config.api.tls.only ? 'only' : 'on') : 'off';
  logger.info({ host: config.api.host, tls, clientCertificates: config.api.tls?.clientCaFile !== undefined, port }, 'token API listening');
}

main().catch((error: unknown) => {
  if (error instanceof ConfigurationError) {
    process.stderr.write(`${error.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`keyhole-api failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
