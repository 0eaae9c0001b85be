/**
 * Longest presented token that is hashed and looked up. keyhole's are 43 characters, Nova's UUIDs
 * 36, legacy stores' a few dozen; anything longer is refused without touching a database or Redis.
 */
export const MAX_PRESENTED_TOKEN_LENGTH = 256;

/** Printable ASCII, the space included. */
const PLAUSIBLE_TOKEN = /^[\x20-\x7e]+$/;

/**
 * Whether a presented token could match a stored one: 1..256 printable ASCII characters. The one
 * rule of every place that takes a token (the console proxy, the API's introspection, the legacy
 * store's lookup, dual-write and import); an implausible token never reaches a database or Redis
 * and gets the answer of an unknown one.
 *
 * keyhole's tokens (43 characters base64url) and Nova's (UUIDs) are well inside. websockify's
 * TokenRedis takes any key its query parsing yields, a space too (`+` or `%20`), and the legacy
 * store has always looked those up: the space stays plausible. Control characters and non-ASCII
 * were refused everywhere and still are.
 */
export function isPlausibleToken(token: string): boolean {
  return token.length > 0 && token.length <= MAX_PRESENTED_TOKEN_LENGTH && PLAUSIBLE_TOKEN.test(token);
}
