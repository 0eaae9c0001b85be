import { CellsService } from '@keyhole/cells';
import { loadConfig } from '@keyhole/config';
import { KeyholeError, ManualClock } from '@keyhole/core';
import { ApiCredentialEntity, ControlDatabase } from '@keyhole/db';
import { Registry } from 'prom-client';
import { generateApiKey } from './api-key';
import { AuthenticationThrottle } from './authentication-throttle';
import { CredentialsService } from './credentials.service';
import { SecretHasher } from './secret-hasher';

// Real argon2id, at the smallest cost: what is counted is how often it runs.
const hasher = new SecretHasher(
  loadConfig({ KEYHOLE_ARGON2_MEMORY_KIB: '64', KEYHOLE_ARGON2_TIME_COST: '1', KEYHOLE_ARGON2_PARALLELISM: '1' }),
);

const CACHE_TTL_MS = 60_000;
const FAILURES_PER_KEY = 3;
const FAILURES_PER_ADDRESS = 5;

async function storedCredential(overrides: Partial<ApiCredentialEntity> = {}) {
  const { id, secret, key } = generateApiKey();
  const row = Object.assign(new ApiCredentialEntity(), {
    id,
    name: 'agent-cell1',
    role: 'agent',
    cellName: 'cell1',
    secretHash: await hasher.hash(secret),
    createdAt: new Date(),
    lastUsedAt: null,
    revokedAt: null,
    ...overrides,
  });
  return { row, key };
}

describe('CredentialsService.authenticate', () => {
  let clock: ManualClock;
  let findById: jest.Mock;
  let service: CredentialsService;
  let verify: jest.SpyInstance;
  let verifyNothing: jest.SpyInstance;
  let registry: Registry;

  beforeEach(() => {
    clock = new ManualClock(Date.UTC(2026, 0, 1));
    findById = jest.fn();
    const control = { credentials: { findById, touchLastUsed: jest.fn().mockResolvedValue(undefined) } } as unknown as ControlDatabase;
    const config = loadConfig({
      KEYHOLE_CREDENTIAL_CACHE_TTL_MS: String(CACHE_TTL_MS),
      KEYHOLE_AUTH_FAILURES_PER_KEY: String(FAILURES_PER_KEY),
      KEYHOLE_AUTH_FAILURES_PER_ADDRESS: String(FAILURES_PER_ADDRESS),
    });
    verify = jest.spyOn(hasher, 'verify');
    verifyNothing = jest.spyOn(hasher, 'verifyNothing');
    registry = new Registry();
    const throttle = new AuthenticationThrottle(config, control, registry);
    service = new CredentialsService(config, clock, control, {} as CellsService, hasher, throttle);
  });

  afterEach(() => {
    verify.mockRestore();
    verifyNothing.mockRestore();
  });

  const refusals = async (reason: string) =>
    (await registry.getSingleMetric('keyhole_api_auth_refusals_total')?.get())?.values.find((value) => value.labels.reason === reason)
      ?.value ?? 0;

  const failure = (promise: Promise<unknown>) =>
    promise.then(
      () => {
        throw new Error('expected a failure');
      },
      (error: unknown) => error as KeyholeError,
    );

  it('verifies with argon2 once, then serves the same key from the cache until it ages out', async () => {
    const { row, key } = await storedCredential();
    findById.mockResolvedValue(row);
    await expect(service.authenticate(key)).resolves.toEqual({ credentialId: row.id, name: row.name, role: 'agent', cellName: 'cell1' });
    await service.authenticate(key);
    expect(verify).toHaveBeenCalledTimes(1);
    clock.advanceSeconds(CACHE_TTL_MS / 1000 + 1);
    await service.authenticate(key);
    expect(verify).toHaveBeenCalledTimes(2);
  });

  it('refuses a wrong secret for a cached id, with argon2', async () => {
    const { row, key } = await storedCredential();
    findById.mockResolvedValue(row);
    await service.authenticate(key);
    const wrong = `${key.slice(0, -1)}${key.endsWith('A') ? 'B' : 'A'}`;
    expect((await failure(service.authenticate(wrong))).code).toBe('UNAUTHENTICATED');
  });

  it('refuses a revoked key at once even though its verification is cached', async () => {
    const { row, key } = await storedCredential();
    findById.mockResolvedValue(row);
    await service.authenticate(key);
    findById.mockResolvedValue({ ...row, revokedAt: new Date() });
    expect((await failure(service.authenticate(key))).code).toBe('UNAUTHENTICATED');
  });

  it('gives one answer for missing, malformed, unknown and wrong keys', async () => {
    const { row, key } = await storedCredential();
    findById.mockImplementation(async (id: string) => (id === row.id ? row : null));
    const other = generateApiKey().key;
    const wrongSecret = `khk_${row.id}_${generateApiKey().secret}`;
    const errors = await Promise.all(
      [undefined, 'nonsense', other, wrongSecret].map((presented) => failure(service.authenticate(presented))),
    );
    expect(new Set(errors.map((error) => `${error.code}|${error.message}`)).size).toBe(1);
    await expect(service.authenticate(key)).resolves.toBeDefined();
  });

  it('does not ask the database about something that is not a key', async () => {
    await failure(service.authenticate('Bearer khk_nope'));
    expect(findById).not.toHaveBeenCalled();
  });

  it('runs a verification of the same cost for unknown and revoked ids as for a wrong secret', async () => {
    const { row } = await storedCredential();
    const { row: revoked, key: revokedKey } = await storedCredential({ revokedAt: new Date() });
    findById.mockImplementation(async (id: string) => (id === row.id ? row : id === revoked.id ? revoked : null));
    await failure(service.authenticate(generateApiKey().key));
    await failure(service.authenticate(revokedKey));
    expect(verifyNothing).toHaveBeenCalledTimes(2);
    await failure(service.authenticate(`khk_${row.id}_${generateApiKey().secret}`));
    expect(verify).toHaveBeenCalledTimes(1);
    expect(await refusals('bad_key')).toBe(3);
  });

  it('refuses a key id past its failure limit before argon2, even with the right secret', async () => {
    const { row, key } = await storedCredential();
    findById.mockResolvedValue(row);
    const wrong = `khk_${row.id}_${generateApiKey().secret}`;
    for (let attempt = 0; attempt < FAILURES_PER_KEY; attempt += 1) {
      expect((await failure(service.authenticate(wrong, `192.0.2.${attempt}`))).code).toBe('UNAUTHENTICATED');
    }
    verify.mockClear();
    const refused = await failure(service.authenticate(key, '198.51.100.1'));
    expect(refused.code).toBe('TOO_MANY_REQUESTS');
    expect(refused.retryAfterSeconds).toBeGreaterThanOrEqual(1);
    expect(refused.retryAfterSeconds).toBeLessThanOrEqual(60);
    expect(verify).not.toHaveBeenCalled();
    expect(await refusals('rate_limited_key')).toBe(1);
  });

  it('still admits a key verified before the lockout, from its cache', async () => {
    const { row, key } = await storedCredential();
    findById.mockResolvedValue(row);
    await service.authenticate(key, '198.51.100.1');
    const wrong = `khk_${row.id}_${generateApiKey().secret}`;
    for (let attempt = 0; attempt <= FAILURES_PER_KEY; attempt += 1) {
      await failure(service.authenticate(wrong, '192.0.2.1'));
    }
    await expect(service.authenticate(key, '198.51.100.1')).resolves.toMatchObject({ credentialId: row.id });
  });

  it('limits failures per client address across key ids, and counts IPv6 clients by their /64', async () => {
    findById.mockResolvedValue(null);
    for (let attempt = 0; attempt < FAILURES_PER_ADDRESS; attempt += 1) {
      const address = `2001:db8:1:2::${attempt + 1}`;
      expect((await failure(service.authenticate(generateApiKey().key, address))).code).toBe('UNAUTHENTICATED');
    }
    expect((await failure(service.authenticate(generateApiKey().key, '2001:db8:1:2:ffff::9'))).code).toBe('TOO_MANY_REQUESTS');
    expect(await refusals('rate_limited_address')).toBe(1);
    expect((await failure(service.authenticate(generateApiKey().key, '2001:db8:1:3::1'))).code).toBe('UNAUTHENTICATED');
  });

  it('does not count successes: a key verified more often than the limit is never refused', async () => {
    const { row, key } = await storedCredential();
    findById.mockResolvedValue(row);
    for (let attempt = 0; attempt < FAILURES_PER_KEY + FAILURES_PER_ADDRESS; attempt += 1) {
      // Past the cache's lifetime each time: every attempt runs argon2 and reserves a failure.
      clock.advanceSeconds(CACHE_TTL_MS / 1000 + 1);
      await expect(service.authenticate(key, '192.0.2.1')).resolves.toBeDefined();
    }
    expect(verify).toHaveBeenCalledTimes(FAILURES_PER_KEY + FAILURES_PER_ADDRESS);
  });

  it('counts a missing or malformed key as malformed, without a failure of any id', async () => {
    for (let attempt = 0; attempt <= FAILURES_PER_ADDRESS; attempt += 1) {
      expect((await failure(service.authenticate('nonsense', '192.0.2.1'))).code).toBe('UNAUTHENTICATED');
    }
    expect(await refusals('malformed')).toBe(FAILURES_PER_ADDRESS + 1);
  });

  it('verifies a key presented by many requests at once only once, and counts it once', async () => {
    const { row, key } = await storedCredential();
    findById.mockResolvedValue(row);
    const principals = await Promise.all(Array.from({ length: 4 * FAILURES_PER_ADDRESS }, () => service.authenticate(key, '192.0.2.1')));
    expect(principals.every((principal) => principal.credentialId === row.id)).toBe(true);
    expect(verify).toHaveBeenCalledTimes(1);
    const wrong = `khk_${row.id}_${generateApiKey().secret}`;
    const refused = await Promise.all(
      Array.from({ length: 4 * FAILURES_PER_KEY }, () => failure(service.authenticate(wrong, '192.0.2.1'))),
    );
    expect(new Set(refused.map((error) => error.code))).toEqual(new Set(['UNAUTHENTICATED']));
    expect(verify).toHaveBeenCalledTimes(2);
  });
});
