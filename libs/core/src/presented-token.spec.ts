import { randomBytes } from 'node:crypto';
import { isPlausibleToken, MAX_PRESENTED_TOKEN_LENGTH } from './presented-token';

describe('isPlausibleToken', () => {
  it("accepts keyhole's tokens, Nova's UUIDs and websockify's free-form keys", () => {
    expect(isPlausibleToken(randomBytes(32).toString('base64url'))).toBe(true);
    expect(isPlausibleToken('0f4b1a52-9b7e-4c1e-8d6a-2f3e4d5c6b7a')).toBe(true);
    expect(isPlausibleToken('vm-42_console')).toBe(true);
    expect(isPlausibleToken('!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~')).toBe(true);
  });

  it('accepts a space, as the legacy store always did', () => {
    expect(isPlausibleToken('my console')).toBe(true);
    expect(isPlausibleToken(' ')).toBe(true);
  });

  it('accepts 1..256 characters, no more', () => {
    expect(MAX_PRESENTED_TOKEN_LENGTH).toBe(256);
    expect(isPlausibleToken('x')).toBe(true);
    expect(isPlausibleToken('x'.repeat(256))).toBe(true);
    expect(isPlausibleToken('x'.repeat(257))).toBe(false);
    expect(isPlausibleToken('')).toBe(false);
  });

  it('refuses control characters and non-ASCII', () => {
    for (const token of ['abc\n', 'abc\u0000', 'tab\there', 'abc\u0001def', 'del\u007f', 'tökén', 'emoji\u{1f511}']) {
      expect(isPlausibleToken(token)).toBe(false);
    }
  });
});
