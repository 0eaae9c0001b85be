import { KeyholeError } from '@keyhole/core';
import { CELL_MIGRATE_COMMAND } from '@keyhole/db';

export function cellNotFound(name: string): KeyholeError {
  return new KeyholeError('CELL_NOT_FOUND', `Cell '${name}' is not registered`, { details: { cell: name } });
}

export function cellDatabaseUnreachable(name: string, cause: unknown): KeyholeError {
  return new KeyholeError('CELL_DATABASE_UNREACHABLE', `The database of cell '${name}' cannot be reached`, {
    details: { cell: name },
    logLevel: 'error',
    cause,
  });
}

/**
 * A cell database without keyhole's complete schema (a migration not applied, a token table that
 * lacks a column keyhole reads): refused rather than served, which would fail later and piecemeal.
 */
export function cellSchemaIncomplete(name: string, problems: string[]): KeyholeError {
  return new KeyholeError(
    'CELL_SCHEMA_INCOMPLETE',
    `The database of cell '${name}' lacks keyhole's schema (${problems.join('; ')}): run \`${CELL_MIGRATE_COMMAND}\``,
    { details: { cell: name, problems }, logLevel: 'error' },
  );
}
