import { generateApiKey, parseApiKey } from './api-key';

describe('API keys', () => {
  it('round-trips a generated key to its id and secret', () => {
    const { id, secret, key } = generateApiKey();
    expect(key).toMatch(/^khk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    expect(parseApiKey(key)).toEqual({ id, secret });
  });

  it('generates a different key every time', () => {
    const keys = new Set(Array.from({ length: 100 }, () => generateApiKey().key));
    expect(keys.size).toBe(100);
  });

  it.each([
    '',
    'khk_',
    'khk_0123456789abcdef',
    'khk_0123456789ABCDEF_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
    'khk_0123456789abcdef_too-short',
    'xyz_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
    'khk_0123456789abcdef_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa$',
    `khk_0123456789abcdef_${'a'.repeat(200)}`,
  ])('refuses %j', (presented) => {
    expect(parseApiKey(presented)).toBeNull();
  });
});
