import { KeyholeError } from '@keyhole/core';

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
