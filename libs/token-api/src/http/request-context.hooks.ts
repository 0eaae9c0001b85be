import { Logger } from '@nestjs/common';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { randomUUID } from 'node:crypto';
import { KeyholeError } from '@keyhole/core';
import type { Principal } from '@keyhole/credentials';

const REQUEST_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

interface RequestContext {
  requestId: string;
  startedAt: bigint;
  principal?: Principal;
}

// A request decoration declared once, so every request object keeps the same shape.
const CONTEXT = Symbol('keyhole.requestContext');

type RequestWithContext = FastifyRequest & { [CONTEXT]: RequestContext | null };

export function requestIdOf(request: FastifyRequest): string {
  return (request as RequestWithContext)[CONTEXT]?.requestId ?? 'unknown';
}

export function setPrincipal(request: FastifyRequest, principal: Principal): void {
  const context = (request as RequestWithContext)[CONTEXT];
  if (context) {
    context.principal = principal;
  }
}

export function principalOf(request: FastifyRequest): Principal | undefined {
  return (request as RequestWithContext)[CONTEXT]?.principal ?? undefined;
}

/**
 * Gives each request an id (the caller's X-Request-Id when well-formed) and `no-store`/`nosniff`
 * headers, refuses bodies that are not JSON before they are read, and writes one access log line
 * when the response is sent. The line names the matched route template (`/v1/cells/:cell/tokens/:id`), never the path as sent: a
 * client may put a token in it by mistake (Nova's API takes tokens in the path). No header is
 * logged.
 */
export function registerRequestContext(fastify: FastifyInstance): void {
  const logger = new Logger('HttpAccess');
  fastify.decorateRequest(CONTEXT, null);

  fastify.addHook('onRequest', (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void) => {
    const offered = request.headers['x-request-id'];
    const requestId = typeof offered === 'string' && REQUEST_ID_PATTERN.test(offered) ? offered : randomUUID();
    (request as RequestWithContext)[CONTEXT] = { requestId, startedAt: process.hrtime.bigint() };
    reply.header('X-Request-Id', requestId);
    // Every answer of the API is JSON data (never a page): not stored by a cache or a browser, never
    // sniffed into something else. An error never repeats the path or query (a token may be in it).
    reply.header('Cache-Control', 'no-store');
    reply.header('X-Content-Type-Options', 'nosniff');
    if (hasBody(request) && !isJson(request.headers['content-type'])) {
      done(new KeyholeError('UNSUPPORTED_MEDIA_TYPE', 'Request bodies must be application/json'));
      return;
    }
    done();
  });

  fastify.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
    const context = (request as RequestWithContext)[CONTEXT];
    logger.log(
      {
        requestId: context?.requestId,
        method: request.method,
        // Unmatched requests (404) have no route template and log none.
        route: request.routeOptions.url ?? null,
        status: reply.statusCode,
        durationMs: context ? Number(process.hrtime.bigint() - context.startedAt) / 1e6 : undefined,
        credentialId: context?.principal?.credentialId,
      },
      'request',
    );
    done();
  });
}

function hasBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length'];
  return request.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

function isJson(contentType: string | undefined): boolean {
  if (contentType === undefined) {
    return false;
  }
  const semicolon = contentType.indexOf(';');
  return (semicolon === -1 ? contentType : contentType.slice(0, semicolon)).trim().toLowerCase() === 'application/json';
}
