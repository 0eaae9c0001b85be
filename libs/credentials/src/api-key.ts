import { randomBytes } from 'node:crypto';

/**
 * API key wire format: `khk_<id>_<secret>`, where `id` is 16 lowercase hex characters (the public
 * part, the row's primary key) and `secret` 43 base64url characters (32 random bytes). Only an
 * argon2id hash of the secret is stored. The prefix makes leaked keys easy to find with scanners.
 */
const API_KEY_PATTERN = /^khk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/;

export interface ParsedApiKey {
  id: string;
  secret: string;
}

export function generateApiKey(): { id: string; secret: string; key: string } {
  const id = randomBytes(8).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  return { id, secret, key: `khk_${id}_${secret}` };
}

/** Whether `value` has the form of a credential id (the public part of a key: 16 lowercase hex). */
export function isCredentialId(value: string): boolean {
  return /^[0-9a-f]{16}$/.test(value);
}

/** Null for anything that is not an API key of this format (the caller answers 401). */
export function parseApiKey(presented: string): ParsedApiKey | null {
  if (presented.length > 100) {
    return null;
  }
  const match = API_KEY_PATTERN.exec(presented);
  return match ? { id: match[1], secret: match[2] } : null;
}
