import 'reflect-metadata';
import { ConfigurationError, KeyholeConfig, loadConfig, requireProxyCell } from '@keyhole/config';
import { CertificateStore, VencryptCredentials } from '@keyhole/tls';
import { createLogger, PinoNestLogger } from '@keyhole/observability';
import { createConsoleProxyApp, isProxyWorker, superviseWorkers, workerId } from '@keyhole/console-proxy';

async function main(): Promise<void> {
  const config = loadConfig();
  const { cellName } = requireProxyCell(config);
  const supervisor = config.proxy.workers > 1 && !isProxyWorker();
  // A line per session: buffered, so that connects do not each pay a write to standard output.
  // The supervisor writes a few lines about its workers, each at once.
  const logger = createLogger({
    level: config.log.level,
    name: `keyhole-proxy-${cellName}`,
    flushIntervalMs: supervisor ? undefined : 200,
  });
  if (supervisor) {
    // The workers read the certificate (and VeNCrypt) files themselves; files that cannot be used stop the start
    // here, once, rather than in every worker.
    if (config.proxy.tls) {
      CertificateStore.load(config.proxy.tls);
    }
    if (config.proxy.vnc.vencrypt) {
      VencryptCredentials.load(config.proxy.vnc.vencrypt);
    }
    superviseWorkers({ workers: config.proxy.workers, cellName, host: config.proxy.host, logger });
    return;
  }
  const app = await createConsoleProxyApp(config, new PinoNestLogger(logger));
  await app.listen(config.proxy.port, config.proxy.host);
  const address = app.getHttpServer().address();
  const port = typeof address === 'object' && address ? address.port : config.proxy.port;
  if (isProxyWorker()) {
    // The supervisor says "console proxy listening" once every worker is.
    logger.info({ cell: cellName, port, worker: workerId() }, 'console proxy worker listening');
    return;
  }
  logger.info({ cell: cellName, host: config.proxy.host, tls: describeTls(config), port }, 'console proxy listening');
}

/** `off`, `on` (TLS and plain on one port) or `only`. */
function describeTls(config: KeyholeConfig): 'off' | 'on' | 'only' {
  return config.proxy.tls ? (config.proxy.tls.only ? 'only' : 'on') : 'off';
}

main().catch((error: unknown) => {
  if (error instanceof ConfigurationError) {
    process.stderr.write(`${error.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`keyhole console proxy failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
