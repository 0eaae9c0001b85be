/**
 * Stable error codes shared by every keyhole process. Each transport (HTTP filter, proxy upgrade
 * handler, CLI) maps every code to its own representation exhaustively, so adding a code here
 * fails the type check until every mapping names it.
 */
export const ERROR_CODES = [
  'INVALID_INPUT',
  'UNSUPPORTED_OBJECT_VERSION',
  'UNROUTABLE_CONSOLE',
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'NOT_FOUND',
  'CELL_NOT_FOUND',
  'TOKEN_NOT_FOUND',
  'CREDENTIAL_NOT_FOUND',
  'SESSION_NOT_FOUND',
  'CELL_EXISTS',
  'CELL_DATABASE_UNREACHABLE',
  'CELL_SCHEMA_INCOMPLETE',
  'TOKEN_IN_USE',
  'PURGE_IN_PROGRESS',
  'FALLBACK_FORCED',
  'PAYLOAD_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
  'TOO_MANY_REQUESTS',
  'AUTHENTICATION_BUSY',
  'SERVICE_UNAVAILABLE',
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** Metadata that is safe to show to a client and to log: never a token, key or password. */
export type SafeDetails = Record<string, unknown>;

/**
 * The one error type libs throw. `message` and `details` are shown to clients, so they must never
 * carry a secret; `cause` is logged (server side only) and may carry a driver error.
 */
export class KeyholeError extends Error {
  readonly code: ErrorCode;
  readonly details: SafeDetails | undefined;
  readonly logLevel: LogLevel;
  /** When the client may try again (a transport sends it as `Retry-After`); unset = not said. */
  readonly retryAfterSeconds: number | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    options: { details?: SafeDetails; logLevel?: LogLevel; cause?: unknown; retryAfterSeconds?: number } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KeyholeError';
    this.code = code;
    this.details = options.details;
    this.logLevel = options.logLevel ?? 'info';
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

export function isKeyholeError(error: unknown): error is KeyholeError {
  return error instanceof KeyholeError;
}
