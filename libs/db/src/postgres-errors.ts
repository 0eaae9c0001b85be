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

/** SQLSTATEs after which the connection is gone: class 08 (connection exception), 57P01-57P02 (shut down, crashed). */
function isLostConnectionState(code: string): boolean {
  return code.startsWith('08') || code === '57P01' || code === '57P02';
}

/**
 * SQLSTATEs of a server that answered but could not serve, the connection being fine: 57014
 * (statement_timeout or a cancel), 57P03 (starting up), 53300 (too many connections).
 */
function isBusyState(code: string): boolean {
  return ['57014', '57P03', '53300'].includes(code);
}

/** Walks `error` and what it wraps (TypeORM's driverError, a `cause`) until `test` holds for one. */
function somewhereIn(error: unknown, test: (candidate: { code?: unknown; message?: unknown }) => boolean): boolean {
  const seen = new Set<unknown>();
  let current: unknown = error;
  while (typeof current === 'object' && current !== null && !seen.has(current)) {
    seen.add(current);
    const candidate = current as { code?: unknown; message?: unknown; driverError?: unknown; cause?: unknown };
    if (test(candidate)) {
      return true;
    }
    current = candidate.driverError ?? candidate.cause;
  }
  return false;
}

/**
 * Whether the connection that failed with `error` can no longer be used: a missed client-side
 * deadline (its statement is still outstanding), or a lost connection. Such a connection is
 * destroyed, never asked to roll back.
 */
export function isConnectionBroken(error: unknown): boolean {
  return somewhereIn(
    error,
    (candidate) =>
      deadlineStage(candidate) !== undefined ||
      (typeof candidate.code === 'string' && (UNAVAILABLE_ERRNOS.has(candidate.code) || isLostConnectionState(candidate.code))) ||
      (typeof candidate.message === 'string' && /^Connection terminated|not queryable/.test(candidate.message)),
  );
}

/**
 * Whether `error` (or what it wraps) says the database could not be asked or did not answer in
 * time: the service is unavailable (503), not broken (500).
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  return isConnectionBroken(error) || somewhereIn(error, (candidate) => typeof candidate.code === 'string' && isBusyState(candidate.code));
}
