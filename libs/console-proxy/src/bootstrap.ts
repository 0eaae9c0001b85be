import type { Duplex } from 'node:stream';
import { LoggerService } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ExpressAdapter, NestExpressApplication } from '@nestjs/platform-express';
import { KeyholeConfig, TrustedProxies } from '@keyhole/config';
import { CertificateStore, TlsHttpServer, VencryptCredentials } from '@keyhole/tls';
import type { NextFunction, Request, Response } from 'express';
import { clientErrorStatus, endWithJson } from '@keyhole/core';
import { createWebClientsRouter, fixedErrorBody, sendFixedError } from '@keyhole/web-clients';
import { ProxyAppModule } from './proxy-app.module';
import { ProxyExceptionFilter } from './proxy-exception.filter';

export function proxyApplicationOptions(logger: LoggerService) {
  return { bodyParser: false, logger, abortOnError: false } as const;
}

/** Builds the console proxy of one cell as production runs it. The caller listens. */
export async function createConsoleProxyApp(
  config: KeyholeConfig,
  logger: LoggerService,
  options: { handleSignals: boolean } = { handleSignals: true },
): Promise<NestExpressApplication> {
  // VeNCrypt files that cannot be used stop the start here with the settings named, before Nest
  // logs anything (the runtime reads them again for its own use).
  if (config.proxy.vnc.vencrypt) {
    VencryptCredentials.load(config.proxy.vnc.vencrypt);
  }
  const app = await NestFactory.create<NestExpressApplication>(
    ProxyAppModule.forRoot(config),
    createProxyAdapter(config),
    proxyApplicationOptions(logger),
  );
  configureConsoleProxyApp(app, config, logger);
  // A process that hosts several apps (the local deployment) handles signals itself.
  if (options.handleSignals) {
    app.enableShutdownHooks(['SIGTERM', 'SIGINT']);
  }
  return app;
}

/**
 * Express on a plain HTTP server, or, with KEYHOLE_PROXY_TLS_CERT_FILE, on one that serves TLS
 * (and plain HTTP unless KEYHOLE_PROXY_TLS_ONLY) on the same port. The certificate files are
 * checked here, before anything else starts: a file that cannot be used stops the start.
 */
export function createProxyAdapter(config: KeyholeConfig): ExpressAdapter {
  const tls = config.proxy.tls;
  if (!tls) {
    return new ExpressAdapter();
  }
  return new TlsExpressAdapter(CertificateStore.load(tls), {
    only: tls.only,
    handshakeTimeoutMs: config.proxy.headersTimeoutMs,
    // Until the hand-over to HTTP, where the caps on unauthenticated connections take over.
    handshakeCaps: { perAddress: config.proxy.maxPendingPerAddress, total: config.proxy.maxPending },
  });
}

class TlsExpressAdapter extends ExpressAdapter {
  constructor(
    private readonly certificates: CertificateStore,
    private readonly tlsOptions: ConstructorParameters<typeof TlsHttpServer>[1],
  ) {
    super();
  }

  override initHttpServer(): void {
    this.httpServer = new TlsHttpServer(this.certificates, this.tlsOptions, this.getInstance());
  }
}

/** HTTP configuration shared by production and tests that build the app from a testing module. */
export function configureConsoleProxyApp(
  app: NestExpressApplication,
  config: KeyholeConfig,
  logger: LoggerService,
): NestExpressApplication {
  app.useLogger(logger);
  // Express believes forwarding headers from the configured proxies only (as the upgrade gate does).
  const trustedProxies = new TrustedProxies(config.proxy.trustedProxies);
  app.set('trust proxy', (address: string) => trustedProxies.trusts(address));
  app.disable('x-powered-by');
  // Nothing the proxy answers over plain HTTP is stored or sniffed: a console URL's query holds its
  // token. The web clients relax Cache-Control for their scripts and styles only.
  app.use(noStoreNoSniff);
  // An HTTP/1.1 request without Host must get 400 (RFC 9112 3.2): Node's own is a bare status line,
  // this one the fixed JSON error. (Upgrades never reach Node's check; the gate reads Host itself.)
  Object.assign(app.getHttpServer(), { requireHostHeader: false });
  app.use(requireHost);
  app.useGlobalFilters(new ProxyExceptionFilter());
  // A request Node's parser refuses (malformed, headers too large, too slow) gets the same fixed
  // JSON error instead of Node's bare status line.
  app.getHttpServer().on('clientError', answerClientError);
  // The browser clients (noVNC, serial terminal, SPICE) come from the proxy itself, so an access
  // URL opens a console with nothing else installed.
  app.use(createWebClientsRouter({ spiceHtml5Dir: config.proxy.spiceHtml5Dir, frameAncestors: config.proxy.frameAncestors }));
  return app;
}

function noStoreNoSniff(_request: Request, response: Response, next: NextFunction): void {
  response.setHeader('Cache-Control', 'no-store');
  response.setHeader('X-Content-Type-Options', 'nosniff');
  next();
}

function requireHost(request: Request, response: Response, next: NextFunction): void {
  if (request.httpVersion === '1.1' && request.headers.host === undefined) {
    sendFixedError(response, 400);
    return;
  }
  next();
}

function answerClientError(error: Error & { code?: string }, socket: Duplex): void {
  const status = clientErrorStatus(error);
  if (status === null) {
    socket.destroy();
    return;
  }
  endWithJson(socket, status, fixedErrorBody(status));
}
