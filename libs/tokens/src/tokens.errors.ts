import { KeyholeError } from '@keyhole/core';

/** Unknown, expired and revoked tokens all get this one answer, so none can be told apart. */
export function invalidToken(): KeyholeError {
  return new KeyholeError('TOKEN_NOT_FOUND', 'The token is invalid or has expired');
}

export function tokenIdNotFound(cell: string, id: number): KeyholeError {
  return new KeyholeError('TOKEN_NOT_FOUND', `No token with id ${id} in cell '${cell}'`, { details: { cell, id } });
}

/** Nova's TokenInUse: the generated token's hash is already stored (never expected with 256 bits). */
export function tokenInUse(): KeyholeError {
  return new KeyholeError('TOKEN_IN_USE', 'The generated token is already in use; request a new one', {
    logLevel: 'error',
  });
}
