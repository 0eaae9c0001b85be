import { Logger } from '@nestjs/common';
import type { NextFunction, Request, Response } from 'express';
import { randomUUID } from 'node:crypto';
import { KeyholeError } from '@keyhole/core';
import type { Principal } from '@keyhole/credentials';

const REQUEST_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

interface RequestContext {
  requestId: string;
  principal?: Principal;
}

const CONTEXT = Symbol('keyhole.requestContext');

type RequestWithContext = Request & { [CONTEXT]?: RequestContext };

export function requestIdOf(request: Request): string {
  return (request as RequestWithContext)[CONTEXT]?.requestId ?? 'unknown';
}

export function setPrincipal(request: Request, principal: Principal): void {
  const context = (request as RequestWithContext)[CONTEXT];
  if (context) context.principal = principal;
}

export function principalOf(request: Request): Principal | undefined {
  return (request as RequestWithContext)[CONTEXT]?.principal;
}

/**
 * Gives each request an id (the caller's X-Request-Id when well-formed), refuses bodies that are
 * not JSON, and writes one access log line when the response is finished. The line names the
 * matched route template (`/v1/cells/:cell/tokens/:id`), never the path as sent: a client may put
 * a token in it by mistake (Nova's API takes tokens in the path). No header is logged.
 */
export class RequestContextMiddleware {
  private readonly logger = new Logger('HttpAccess');

  use(request: Request, response: Response, next: NextFunction): void {
    const offered = request.header('x-request-id');
    const requestId = offered && REQUEST_ID_PATTERN.test(offered) ? offered : randomUUID();
    (request as RequestWithContext)[CONTEXT] = { requestId };
    response.setHeader('X-Request-Id', requestId);
    const startedAt = process.hrtime.bigint();
    response.on('finish', () => {
      const principal = principalOf(request);
      this.logger.log(
        {
          requestId,
          method: request.method,
          route: routeOf(request),
          status: response.statusCode,
          durationMs: Number(process.hrtime.bigint() - startedAt) / 1e6,
          credentialId: principal?.credentialId,
        },
        'request',
      );
    });
    if (hasBody(request) && !request.is('application/json')) {
      next(new KeyholeError('UNSUPPORTED_MEDIA_TYPE', 'Request bodies must be application/json'));
      return;
    }
    next();
  }
}

function routeOf(request: Request): string | null {
  // Express sets `route` (typed any) once a route matched; unmatched requests log no route.
  const route = (request as { route?: unknown }).route as { path?: unknown } | undefined;
  return typeof route?.path === 'string' ? `${request.baseUrl}${route.path}` : null;
}

function hasBody(request: Request): boolean {
  const length = request.header('content-length');
  return request.header('transfer-encoding') !== undefined || (length !== undefined && length !== '0');
}
