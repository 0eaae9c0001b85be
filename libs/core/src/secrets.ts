import { createHash, timingSafeEqual } from 'node:crypto';

/** SHA-256 of the UTF-8 bytes as 64 lowercase hex characters: exactly Nova's token hashing. */
export function sha256Hex(value: string): string {
  return createHash('sha256').update(value, 'utf8').digest('hex');
}

/**
 * What logs, metrics and errors carry instead of a token: the first 12 hex characters of its hash.
 * 48 bits are enough to tell tokens apart in an investigation and useless for guessing one.
 */
export function fingerprintOfHash(tokenHash: string): string {
  return tokenHash.slice(0, 12);
}

/** Compare two secrets (or digests) in constant time whatever their content. */
export function constantTimeEqual(a: string, b: string): boolean {
  const left = createHash('sha256').update(a, 'utf8').digest();
  const right = createHash('sha256').update(b, 'utf8').digest();
  // Hashing first gives equal lengths, so timingSafeEqual never throws and no length leaks.
  return timingSafeEqual(left, right) && a.length === b.length;
}
