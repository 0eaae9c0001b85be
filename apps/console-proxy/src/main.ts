import 'reflect-metadata';
import { ConfigurationError, loadConfig, requireProxyCell } from '@keyhole/config';
import { createLogger, PinoNestLogger } from '@keyhole/observability';
import { createConsoleProxyApp } from './bootstrap';

async function main(): Promise<void> {
  const config = loadConfig();
  const { cellName } = requireProxyCell(config);
  // A line per session: buffered, so that connects do not each pay a write to standard output.
  const logger = createLogger({ level: config.log.level, name: `keyhole-proxy-${cellName}`, flushIntervalMs: 200 });
  const app = await createConsoleProxyApp(config, new PinoNestLogger(logger));
  await app.listen(config.proxy.port, config.proxy.host);
  const address = app.getHttpServer().address();
  const port = typeof address === 'object' && address ? address.port : config.proxy.port;
  logger.info({ cell: cellName, host: config.proxy.host, port }, 'console proxy listening');
}

main().catch((error: unknown) => {
  if (error instanceof ConfigurationError) {
    process.stderr.write(`${error.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`keyhole console proxy failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
