import { ArgumentsHost, Catch, ExceptionFilter, HttpException, Logger } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ErrorCode, KeyholeError } from '@keyhole/core';
import { isDatabaseUnavailable } from '@keyhole/db';
import { requestIdOf } from './request-context.hooks';

/** HTTP status of every error code; a new code fails the type check until it is mapped here. */
export const STATUS_OF_CODE: Record<ErrorCode, number> = {
  INVALID_INPUT: 400,
  UNSUPPORTED_OBJECT_VERSION: 400,
  UNROUTABLE_CONSOLE: 400,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  CELL_NOT_FOUND: 404,
  TOKEN_NOT_FOUND: 404,
  CREDENTIAL_NOT_FOUND: 404,
  SESSION_NOT_FOUND: 404,
  CELL_EXISTS: 409,
  TOKEN_IN_USE: 409,
  PURGE_IN_PROGRESS: 409,
  FALLBACK_FORCED: 409,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  TOO_MANY_REQUESTS: 429,
  INTERNAL: 500,
  CELL_DATABASE_UNREACHABLE: 503,
  CELL_SCHEMA_INCOMPLETE: 503,
  SERVICE_UNAVAILABLE: 503,
  AUTHENTICATION_BUSY: 503,
};

/** Body of every error answer. */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
  details?: Record<string, unknown>;
  requestId: string;
}

/**
 * The API's one exception filter: domain errors keep their code; framework and parser errors get
 * the nearest code; anything else is 500 INTERNAL with the request id to find it in the logs.
 */
@Catch()
export class ApiExceptionFilter implements ExceptionFilter {
  catch(exception: unknown, host: ArgumentsHost): void {
    const context = host.switchToHttp();
    sendError(exception, context.getRequest<FastifyRequest>(), context.getResponse<FastifyReply>());
  }
}

const logger = new Logger('HttpErrors');

/**
 * Answers an error with its status and the one error body. Nest installs itself as Fastify's error
 * handler, so what fails before a route handler runs (hooks, body parsing) arrives here too.
 */
function sendError(exception: unknown, request: FastifyRequest, reply: FastifyReply): void {
  const requestId = requestIdOf(request);
  const error = toKeyholeError(exception);
  if (error.code === 'INTERNAL' || error.code === 'SERVICE_UNAVAILABLE' || error.code === 'CELL_DATABASE_UNREACHABLE') {
    logger.error({ requestId, code: error.code, err: error.cause ?? exception }, error.message);
  } else if (error.logLevel === 'warn' || error.logLevel === 'error') {
    logger[error.logLevel]({ requestId, code: error.code }, error.message);
  }
  const body: ErrorBody = { code: error.code, message: error.message, requestId };
  if (error.details !== undefined) {
    body.details = error.details;
  }
  if (reply.sent) {
    return;
  }
  if (error.retryAfterSeconds !== undefined) {
    void reply.header('Retry-After', String(error.retryAfterSeconds));
  }
  void reply.status(STATUS_OF_CODE[error.code]).send(body);
}

/** Fastify's own errors (`code` FST_ERR_...; Nest wraps the 4xx ones in an HttpException), by what they mean. */
const FASTIFY_ERRORS: Record<string, () => KeyholeError> = {
  FST_ERR_CTP_BODY_TOO_LARGE: () => new KeyholeError('PAYLOAD_TOO_LARGE', 'The request body is too large'),
  FST_ERR_CTP_INVALID_MEDIA_TYPE: () => new KeyholeError('UNSUPPORTED_MEDIA_TYPE', 'Request bodies must be application/json'),
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: () => new KeyholeError('INVALID_INPUT', 'The request body does not match its Content-Length'),
  FST_ERR_CTP_EMPTY_JSON_BODY: () => new KeyholeError('INVALID_INPUT', 'The request body is not valid JSON'),
  FST_ERR_CTP_INVALID_JSON_BODY: () => new KeyholeError('INVALID_INPUT', 'The request body is not valid JSON'),
};

function toKeyholeError(exception: unknown): KeyholeError {
  if (exception instanceof KeyholeError) {
    return exception;
  }
  const fastifyCode = (((exception instanceof HttpException ? exception.cause : undefined) ?? exception) as { code?: unknown } | null)
    ?.code;
  if (typeof fastifyCode === 'string' && Object.hasOwn(FASTIFY_ERRORS, fastifyCode)) {
    return FASTIFY_ERRORS[fastifyCode]();
  }
  if (exception instanceof HttpException) {
    const status = exception.getStatus();
    if (status === 404) {
      return new KeyholeError('NOT_FOUND', 'No such resource');
    }
    if (status === 415) {
      return new KeyholeError('UNSUPPORTED_MEDIA_TYPE', 'The request body encoding is not supported');
    }
    if (status === 413) {
      return new KeyholeError('PAYLOAD_TOO_LARGE', 'The request body is too large');
    }
    if (status >= 400 && status < 500) {
      return new KeyholeError('INVALID_INPUT', 'The request is not valid');
    }
  }
  if (isDatabaseUnavailable(exception)) {
    return new KeyholeError('SERVICE_UNAVAILABLE', 'A database needed for this request did not answer in time or cannot be reached', {
      logLevel: 'error',
      cause: exception,
    });
  }
  return new KeyholeError('INTERNAL', 'Internal error; quote the requestId when reporting it', {
    logLevel: 'error',
    cause: exception,
  });
}
