/** SQLSTATE of a pg driver error (possibly wrapped by TypeORM's QueryFailedError), if any. */
export function postgresErrorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const candidate = error as { code?: unknown; driverError?: { code?: unknown } };
  if (typeof candidate.driverError?.code === 'string') return candidate.driverError.code;
  return typeof candidate.code === 'string' ? candidate.code : undefined;
}

export const UNIQUE_VIOLATION = '23505';
export const CHECK_VIOLATION = '23514';
