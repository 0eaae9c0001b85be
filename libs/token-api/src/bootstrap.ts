import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { LoggerService } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { RequestListener, Server } from 'node:http';
import { KeyholeConfig, TrustedProxies } from '@keyhole/config';
import { CertificateStore, TlsHttpServer } from '@keyhole/tls';
import { clientErrorStatus, endWithJson } from '@keyhole/core';
import { TokenApiModule } from './token-api.module';
import { registerJsonBodyParser } from './http/json-body.parser';
import { registerRequestContext } from './http/request-context.hooks';

/** Options Nest is created with; tests that override providers create the app with these too. */
export function nestApplicationOptions(logger: LoggerService) {
  return { bodyParser: false, logger, abortOnError: false } as const;
}

/**
 * The HTTP server under Nest: Fastify, whose per-request cost is about half of Express's (the API
 * answers thousands of token requests a second). Routing as Express did it: case-insensitive,
 * a trailing slash ignored, path parameters of any length (validation answers a bad one with 400).
 */
export function createTokenApiAdapter(config: KeyholeConfig): FastifyAdapter {
  // With KEYHOLE_API_TLS_CERT_FILE the server serves TLS (and plain HTTP unless
  // KEYHOLE_API_TLS_ONLY) on its port; the files are checked now, before anything else starts.
  const tls = config.api.tls;
  const certificates = tls ? CertificateStore.load(tls) : null;
  return new FastifyAdapter({
    ...(certificates && tls
      ? { serverFactory: (handler: RequestListener, options: ServerTimeouts) => tlsServer(handler, options, certificates, tls.only) }
      : {}),
    bodyLimit: config.api.bodyLimitBytes,
    // X-Forwarded-For/-Proto from the configured proxies only; the client is the right-most
    // untrusted hop (Fastify walks the chain as TrustedProxies does).
    trustProxy: trustedProxiesFunction(config.api.trustedProxies),
    routerOptions: { caseSensitive: false, ignoreTrailingSlash: true, maxParamLength: 8_192 },
    clientErrorHandler: answerClientError,
    frameworkErrors: answerUnroutableUrl,
  });
}

/** Longest wait from a connection's accept to its first byte, and for its TLS handshake. */
const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

/** Fastify's timeouts, which it sets on the servers it creates itself but not on a factory's. */
interface ServerTimeouts {
  keepAliveTimeout?: number;
  requestTimeout?: number;
  connectionTimeout?: number;
  maxRequestsPerSocket?: number;
}

function tlsServer(handler: RequestListener, options: ServerTimeouts, certificates: CertificateStore, only: boolean): Server {
  const server = new TlsHttpServer(certificates, { only, handshakeTimeoutMs: TLS_HANDSHAKE_TIMEOUT_MS }, handler);
  // As Fastify does for its own servers (lib/server.js getServerInstance).
  if (options.keepAliveTimeout !== undefined) {
    server.keepAliveTimeout = options.keepAliveTimeout;
  }
  if (options.requestTimeout !== undefined) {
    server.requestTimeout = options.requestTimeout;
  }
  server.setTimeout(options.connectionTimeout ?? 0);
  if (options.maxRequestsPerSocket !== undefined && options.maxRequestsPerSocket > 0) {
    server.maxRequestsPerSocket = options.maxRequestsPerSocket;
  }
  return server;
}

/** Builds the token API as production runs it. The caller listens. */
export async function createTokenApi(
  config: KeyholeConfig,
  logger: LoggerService,
  options: { handleSignals: boolean } = { handleSignals: true },
): Promise<NestFastifyApplication> {
  const app = await NestFactory.create<NestFastifyApplication>(
    TokenApiModule.forRoot(config),
    createTokenApiAdapter(config),
    nestApplicationOptions(logger),
  );
  configureTokenApi(app, logger);
  // A process that hosts several apps (the local deployment) handles signals itself.
  if (options.handleSignals) {
    app.enableShutdownHooks(['SIGTERM', 'SIGINT']);
  }
  return app;
}

/**
 * Everything the app needs besides its modules: request ids and access lines, JSON bodies up to
 * the configured limit (errors before a route handler reach the app's exception filter). Tests that build the
 * app from a testing module call this as well, so they run the same HTTP stack as production.
 */
export function configureTokenApi(app: NestFastifyApplication, logger: LoggerService): NestFastifyApplication {
  app.useLogger(logger);
  const fastify = app.getHttpAdapter().getInstance();
  registerRequestContext(fastify);
  registerJsonBodyParser(fastify);
  return app;
}

/** Fastify's `trustProxy` as a function of the peer (or hop) address; none trusted when the list is empty. */
function trustedProxiesFunction(ranges: readonly string[]): boolean | ((address: string) => boolean) {
  if (ranges.length === 0) {
    return false;
  }
  const trustedProxies = new TrustedProxies(ranges);
  return (address: string) => trustedProxies.trusts(address);
}

/**
 * A URL the router refuses before any hook or filter runs: malformed percent-encoding
 * (FST_ERR_BAD_URL) or a path parameter over `maxParamLength` (FST_ERR_MAX_PARAM_LENGTH). Fastify's
 * own answers (400, 414) repeat the path, where a token may be: answer as any other invalid request
 * (400 INVALID_INPUT, the API's error body and headers, a fresh request id), repeating nothing.
 */
function answerUnroutableUrl(_error: Error, _request: FastifyRequest, reply: FastifyReply): void {
  const requestId = randomUUID();
  void reply
    .status(400)
    .header('X-Request-Id', requestId)
    .header('Cache-Control', 'no-store')
    .header('X-Content-Type-Options', 'nosniff')
    .send({ code: 'INVALID_INPUT', message: 'The request path is not valid', requestId });
}

/**
 * A request Fastify's parser refused (malformed, headers too large, too slow): the API's error body
 * (INVALID_INPUT, a fresh request id), not Fastify's own shape; nothing of the request is repeated.
 */
function answerClientError(error: Error & { code?: string }, socket: Duplex): void {
  if (clientErrorStatus(error) === null) {
    socket.destroy();
    return;
  }
  endWithJson(socket, 400, { code: 'INVALID_INPUT', message: 'The request is not valid HTTP', requestId: randomUUID() });
}
