/** SQLSTATE of a pg driver error (possibly wrapped by TypeORM's QueryFailedError), if any. */
export function postgresErrorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) {
    return undefined;
  }
  const candidate = error as { code?: unknown; driverError?: { code?: unknown } };
  if (typeof candidate.driverError?.code === 'string') {
    return candidate.driverError.code;
  }
  return typeof candidate.code === 'string' ? candidate.code : undefined;
}

export const UNIQUE_VIOLATION = '23505';
export const CHECK_VIOLATION = '23514';

/**
 * Whether a statement failed because of a row's values (SQLSTATE class 22, data exception, or 23,
 * integrity constraint violation) rather than because the database could not be asked: a batch
 * that fails so can be written again row by row.
 */
export function isRowDataError(error: unknown): boolean {
  const code = postgresErrorCode(error);
  return code !== undefined && (code.startsWith('22') || code.startsWith('23'));
}

/** Which client-side deadline was missed: opening or waiting for a connection, or a statement's answer. */
export type DeadlineStage = 'connect' | 'query';

// pg and pg-pool give their deadline errors no code: only these messages tell them apart (pg 8).
const CONNECT_DEADLINE_MESSAGES =
  /^(timeout exceeded when trying to connect|Connection terminated due to connection timeout|timeout expired)$/;
const QUERY_DEADLINE_MESSAGE = 'Query read timeout';

/** The client-side deadline `error` reports (see createPool), if it is one. */
export function deadlineStage(error: unknown): DeadlineStage | undefined {
  if (!(error instanceof Error)) {
    return undefined;
  }
  if (error.message === QUERY_DEADLINE_MESSAGE) {
    return 'query';
  }
  return CONNECT_DEADLINE_MESSAGES.test(error.message) ? 'connect' : undefined;
}

/** Connection-level failures of the driver, by errno. */
const UNAVAILABLE_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EPIPE']);

/**
 * SQLSTATEs that mean the database could not answer, not that the request was wrong: class 08
 * (connection exception), 57014 (statement_timeout or a cancel), 57P01-57P03 (shutting down,
 * crashed, starting), 53300 (too many connections).
 */
function isUnavailableState(code: string): boolean {
  return code.startsWith('08') || ['57014', '57P01', '57P02', '57P03', '53300'].includes(code);
}

/**
 * Whether `error` (or what it wraps: TypeORM's driverError, a `cause`) says the database could not
 * be asked or did not answer in time: the service is unavailable (503), not broken (500).
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  const seen = new Set<unknown>();
  let current: unknown = error;
  while (typeof current === 'object' && current !== null && !seen.has(current)) {
    seen.add(current);
    if (deadlineStage(current) !== undefined) {
      return true;
    }
    const candidate = current as { code?: unknown; message?: unknown; driverError?: unknown; cause?: unknown };
    if (typeof candidate.code === 'string' && (UNAVAILABLE_ERRNOS.has(candidate.code) || isUnavailableState(candidate.code))) {
      return true;
    }
    if (typeof candidate.message === 'string' && /^Connection terminated|not queryable/.test(candidate.message)) {
      return true;
    }
    current = candidate.driverError ?? candidate.cause;
  }
  return false;
}
