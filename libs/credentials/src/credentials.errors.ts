import { KeyholeError } from '@keyhole/core';

/** One answer for every authentication failure: missing, malformed, unknown, wrong or revoked key. */
export function unauthenticated(): KeyholeError {
  return new KeyholeError('UNAUTHENTICATED', 'A valid API key is required (Authorization: Bearer khk_...)');
}

export function credentialNotFound(id: string): KeyholeError {
  return new KeyholeError('CREDENTIAL_NOT_FOUND', `No live credential with id '${id}'`, { details: { id } });
}

/** Too many failed authentications for the key's id or from the client's address (429). */
export function tooManyFailures(retryAfterSeconds: number): KeyholeError {
  return new KeyholeError('TOO_MANY_REQUESTS', 'Too many failed authentications; try again later', { retryAfterSeconds });
}

/** More key verifications waiting than the queue holds (503); the client should retry shortly. */
export function authenticationBusy(): KeyholeError {
  return new KeyholeError('AUTHENTICATION_BUSY', 'Too many API keys are being verified; try again in a moment', {
    retryAfterSeconds: 1,
    logLevel: 'warn',
  });
}
