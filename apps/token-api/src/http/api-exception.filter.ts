import { ArgumentsHost, Catch, ExceptionFilter, HttpException, Logger } from '@nestjs/common';
import type { Request, Response } from 'express';
import { ErrorCode, KeyholeError } from '@keyhole/core';
import { requestIdOf } from './request-context.middleware';

/** HTTP status of every error code; a new code fails the type check until it is mapped here. */
export const STATUS_OF_CODE: Record<ErrorCode, number> = {
  INVALID_INPUT: 400,
  UNSUPPORTED_OBJECT_VERSION: 400,
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
  INTERNAL: 500,
  CELL_DATABASE_UNREACHABLE: 503,
  SERVICE_UNAVAILABLE: 503,
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
  private readonly logger = new Logger('HttpErrors');

  catch(exception: unknown, host: ArgumentsHost): void {
    const context = host.switchToHttp();
    const request = context.getRequest<Request>();
    const response = context.getResponse<Response>();
    const requestId = requestIdOf(request);
    const error = toKeyholeError(exception);
    if (error.code === 'INTERNAL' || error.code === 'SERVICE_UNAVAILABLE' || error.code === 'CELL_DATABASE_UNREACHABLE') {
      this.logger.error({ requestId, code: error.code, err: error.cause ?? exception }, error.message);
    } else if (error.logLevel === 'warn' || error.logLevel === 'error') {
      this.logger[error.logLevel]({ requestId, code: error.code }, error.message);
    }
    const body: ErrorBody = { code: error.code, message: error.message, requestId };
    if (error.details !== undefined) body.details = error.details;
    if (response.headersSent) return;
    response.status(STATUS_OF_CODE[error.code]).json(body);
  }
}

/** Connection-level failures of the database driver: the service is unavailable, not broken. */
const UNAVAILABLE_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND', 'EPIPE']);

function toKeyholeError(exception: unknown): KeyholeError {
  if (exception instanceof KeyholeError) return exception;
  // Nest wraps the body parser's errors in an HttpException whose cause is the parser's error.
  const parserError = ((exception instanceof HttpException ? exception.cause : undefined) ?? exception) as { type?: unknown };
  if (parserError?.type === 'entity.too.large') {
    return new KeyholeError('PAYLOAD_TOO_LARGE', 'The request body is too large');
  }
  if (parserError?.type === 'entity.parse.failed') {
    return new KeyholeError('INVALID_INPUT', 'The request body is not valid JSON');
  }
  if (parserError?.type === 'encoding.unsupported' || parserError?.type === 'charset.unsupported') {
    return new KeyholeError('UNSUPPORTED_MEDIA_TYPE', 'The request body encoding is not supported');
  }
  if (exception instanceof HttpException) {
    const status = exception.getStatus();
    if (status === 404) return new KeyholeError('NOT_FOUND', 'No such resource');
    if (status === 415) return new KeyholeError('UNSUPPORTED_MEDIA_TYPE', 'The request body encoding is not supported');
    if (status === 413) return new KeyholeError('PAYLOAD_TOO_LARGE', 'The request body is too large');
    if (status >= 400 && status < 500) return new KeyholeError('INVALID_INPUT', 'The request is not valid');
  }
  if (isUnavailable(exception)) {
    return new KeyholeError('SERVICE_UNAVAILABLE', 'A database needed for this request cannot be reached', {
      logLevel: 'error',
      cause: exception,
    });
  }
  return new KeyholeError('INTERNAL', 'Internal error; quote the requestId when reporting it', {
    logLevel: 'error',
    cause: exception,
  });
}

function isUnavailable(exception: unknown): boolean {
  const seen = new Set<unknown>();
  let current: unknown = exception;
  while (typeof current === 'object' && current !== null && !seen.has(current)) {
    seen.add(current);
    const candidate = current as { code?: unknown; message?: unknown; driverError?: unknown; cause?: unknown };
    if (typeof candidate.code === 'string' && (UNAVAILABLE_ERRNOS.has(candidate.code) || candidate.code.startsWith('08') || candidate.code === '57P01')) {
      return true;
    }
    if (typeof candidate.message === 'string' && /Connection terminated|timeout exceeded when trying to connect/i.test(candidate.message)) {
      return true;
    }
    current = candidate.driverError ?? candidate.cause;
  }
  return false;
}
