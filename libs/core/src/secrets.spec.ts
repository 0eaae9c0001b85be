import { createHash } from 'node:crypto';
import { constantTimeEqual, fingerprintOfHash, sha256Hex } from './secrets';

describe('token hashing', () => {
  it("is Nova's: SHA-256 of the UTF-8 bytes as 64 lowercase hex", () => {
    const novaToken = '0f4b1a52-9b7e-4c1e-8d6a-2f3e4d5c6b7a';
    const hash = sha256Hex(novaToken);
    expect(hash).toMatch(/^[0-9a-f]{64}$/);
    expect(hash).toBe(createHash('sha256').update(Buffer.from(novaToken, 'utf8')).digest('hex'));
    expect(sha256Hex('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });

  it('fingerprints with the first 12 hex characters of the hash', () => {
    expect(fingerprintOfHash(sha256Hex('abc'))).toBe('ba7816bf8f01');
  });
});

describe('constantTimeEqual', () => {
  it('tells equal from different secrets, whatever their lengths', () => {
    expect(constantTimeEqual('secret', 'secret')).toBe(true);
    expect(constantTimeEqual('secret', 'secreT')).toBe(false);
    expect(constantTimeEqual('secret', 'secret-longer')).toBe(false);
    expect(constantTimeEqual('', '')).toBe(true);
  });
});
