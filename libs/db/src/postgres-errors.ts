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
