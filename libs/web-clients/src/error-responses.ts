import { STATUS_CODES } from 'node:http';
import type { Response } from 'express';

/** The body of every error the console proxy answers over plain HTTP. */
export interface ProxyErrorBody {
  /** Stable, SCREAMING_SNAKE. */
  code: string;
  message: string;
}

/**
 * One fixed body per status. Nothing of the request (path, query, headers) is ever written into an
 * answer: the query of a console URL holds its token, and a cached or logged error page would keep it.
 */
const FIXED_ERRORS: Readonly<Record<number, ProxyErrorBody>> = {
  400: { code: 'INVALID_REQUEST', message: 'The request is not valid' },
  404: { code: 'NOT_FOUND', message: 'No such resource' },
  405: { code: 'METHOD_NOT_ALLOWED', message: 'This method is not allowed here' },
  408: { code: 'REQUEST_TIMEOUT', message: 'The request took too long' },
  413: { code: 'PAYLOAD_TOO_LARGE', message: 'The request body is too large' },
  415: { code: 'UNSUPPORTED_MEDIA_TYPE', message: 'The request body encoding is not supported' },
  431: { code: 'HEADERS_TOO_LARGE', message: 'The request headers are too large' },
  500: { code: 'INTERNAL', message: 'Internal error' },
  503: { code: 'UNAVAILABLE', message: 'The service is unavailable' },
};

/** The fixed body of a status: its own, else that of 400 (other 4xx) or 500. */
export function fixedErrorBody(status: number): ProxyErrorBody {
  return (
    FIXED_ERRORS[status] ??
    (status >= 400 && status < 500 ? { code: 'INVALID_REQUEST', message: STATUS_CODES[status] ?? 'Bad request' } : FIXED_ERRORS[500])
  );
}

/**
 * Answers an error with its fixed JSON body, never stored (`no-store`) nor sniffed (`nosniff`).
 * A response whose head is already out is destroyed instead.
 */
export function sendFixedError(response: Response, status: number): void {
  if (response.headersSent) {
    response.destroy();
    return;
  }
  const answered = status >= 400 && status < 600 ? status : 500;
  response.status(answered);
  response.setHeader('Content-Type', 'application/json; charset=utf-8');
  response.setHeader('Cache-Control', 'no-store');
  response.setHeader('X-Content-Type-Options', 'nosniff');
  response.end(JSON.stringify(fixedErrorBody(answered)));
}
