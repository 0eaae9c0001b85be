import { KeyholeError } from '@keyhole/core';

/** One answer for every authentication failure: missing, malformed, unknown, wrong or revoked key. */
export function unauthenticated(): KeyholeError {
  return new KeyholeError('UNAUTHENTICATED', 'A valid API key is required (Authorization: Bearer khk_...)');
}

export function credentialNotFound(id: string): KeyholeError {
  return new KeyholeError('CREDENTIAL_NOT_FOUND', `No live credential with id '${id}'`, { details: { id } });
}
