import { ArgumentsHost, Catch, ExceptionFilter, HttpException, Logger } from '@nestjs/common';
import type { Response } from 'express';
import { sendFixedError } from '@keyhole/web-clients';

/**
 * The proxy's one exception filter for plain HTTP: every error, Nest's own 404 for an unknown path
 * (whose default message, `Cannot GET /websockify?token=...`, repeats the token) included, is
 * answered with the fixed JSON body of its status, `no-store` and `nosniff`. Unknown errors are 500
 * and logged without the request's URL.
 */
@Catch()
export class ProxyExceptionFilter implements ExceptionFilter {
  private readonly logger = new Logger('ConsoleProxyHttp');

  catch(exception: unknown, host: ArgumentsHost): void {
    const status = exception instanceof HttpException ? exception.getStatus() : errorStatus(exception);
    if (status >= 500) {
      this.logger.error({ err: exception }, 'request failed');
    }
    sendFixedError(host.switchToHttp().getResponse<Response>(), status);
  }
}

/** The status an Express middleware error carries (`status` or `statusCode`, as http-errors sets it), else 500. */
function errorStatus(exception: unknown): number {
  const candidate = exception as { status?: unknown; statusCode?: unknown } | null;
  const status = candidate?.status ?? candidate?.statusCode;
  return typeof status === 'number' && status >= 400 && status < 600 ? status : 500;
}
