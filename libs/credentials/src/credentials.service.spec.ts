import { CellsService } from '@keyhole/cells';
import { loadConfig } from '@keyhole/config';
import { KeyholeError, ManualClock } from '@keyhole/core';
import { ApiCredentialEntity, ControlDatabase } from '@keyhole/db';
import { generateApiKey } from './api-key';
import { CredentialsService } from './credentials.service';
import { SecretHasher } from './secret-hasher';

// Real argon2id, at the smallest cost: what is counted is how often it runs.
const hasher = new SecretHasher(
  loadConfig({ KEYHOLE_ARGON2_MEMORY_KIB: '64', KEYHOLE_ARGON2_TIME_COST: '1', KEYHOLE_ARGON2_PARALLELISM: '1' }),
);

const CACHE_TTL_MS = 60_000;

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

  beforeEach(() => {
    clock = new ManualClock(Date.UTC(2026, 0, 1));
    findById = jest.fn();
    const control = { credentials: { findById, touchLastUsed: jest.fn().mockResolvedValue(undefined) } } as unknown as ControlDatabase;
    const config = loadConfig({ KEYHOLE_CREDENTIAL_CACHE_TTL_MS: String(CACHE_TTL_MS) });
    verify = jest.spyOn(hasher, 'verify');
    service = new CredentialsService(config, clock, control, {} as CellsService, hasher);
  });

  afterEach(() => verify.mockRestore());

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
});
