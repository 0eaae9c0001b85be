import { INestApplicationContext } from '@nestjs/common';
import { CellDatabases, CellsService } from '@keyhole/cells';
import { KeyholeError, sha256Hex } from '@keyhole/core';
import { ConsoleAuthTokenRepository, NewConsoleAuthTokenRow, postgresErrorCode, CELL_CONNECTION_OPTIONS } from '@keyhole/db';
import { randomTokenGenerator, TokensService } from '@keyhole/tokens';
import { Client, Pool, QueryConfig } from 'pg';
import { testConfig } from '../support/config';
import { createTestDatabase, queryDatabase } from '../support/databases';
import { startServices } from '../support/services';

/** Concurrent issues share one INSERT: each caller must get its own committed row or its own error. */
describe('concurrent token inserts on a real cell database', () => {
  let control: Awaited<ReturnType<typeof createTestDatabase>>;
  let cell: Awaited<ReturnType<typeof createTestDatabase>>;
  let app: INestApplicationContext;
  let tokens: TokensService;
  let repository: ConsoleAuthTokenRepository;
  let cellPool: Pool;
  // Tokens the generator hands out next, in order; random ones once empty.
  const forcedTokens: string[] = [];

  beforeAll(async () => {
    control = await createTestDatabase('control');
    cell = await createTestDatabase('cell');
    const started = await startServices(testConfig(control.url, { KEYHOLE_DB_STATEMENT_TIMEOUT_MS: '1000' }), {
      tokenGenerator: () => forcedTokens.shift() ?? randomTokenGenerator(),
    });
    app = started.app;
    await app.get(CellsService).register({ name: 'cell1', databaseUrl: cell.url, proxyUrl: 'https://console.example.com' });
    tokens = app.get(TokensService);
    const database = await app.get(CellDatabases).get('cell1');
    repository = database.tokens;
    cellPool = database.pool;
  });

  afterAll(async () => {
    await app?.close();
    await cell?.drop();
    await control?.drop();
  });

  afterEach(() => jest.restoreAllMocks());

  /** The batches of rows sent to the database as INSERT statements (the hashes of each). */
  const spyOnInserts = () => {
    const query = jest.spyOn(cellPool, 'query') as unknown as jest.SpyInstance<unknown, [QueryConfig]>;
    return () =>
      query.mock.calls
        .map(([config]) => config)
        .filter((config) => typeof config === 'object' && /^keyhole_insert_tokens_/.test(config.name ?? ''))
        .map((config) => (config.values as string[][])[0]);
  };

  beforeEach(async () => {
    forcedTokens.length = 0;
    await queryDatabase(cell.url, 'DELETE FROM console_auth_tokens');
  });

  const instance = (index: number) => `00000000-0000-4000-8000-${String(index).padStart(12, '0')}`;

  /** `count` concurrent issues, for instances 0 to count - 1 on ports 5900 upwards. */
  const authorizeConcurrently = (count: number) =>
    Array.from({ length: count }, (_, index) =>
      tokens.authorize('cell1', { instanceUuid: instance(index), consoleType: 'novnc', host: 'hv1', port: 5900 + index, issuedBy: null }),
    );

  const outcome = (promise: Promise<{ token?: string; row: { instanceUuid: string; port: number; tokenHash: string } }>) =>
    promise.then(
      (issued) => ({ issued }),
      (error: unknown) => ({ code: error instanceof KeyholeError ? error.code : (postgresErrorCode(error) ?? String(error)) }),
    );

  it('gives each of many concurrent callers its own row, committed when its call returns', async () => {
    const inserts = spyOnInserts();
    const issued = await Promise.all(authorizeConcurrently(40));
    for (const [index, token] of issued.entries()) {
      expect(token.row).toMatchObject({ instanceUuid: instance(index), port: 5900 + index, tokenHash: sha256Hex(token.token!) });
    }
    expect(new Set(issued.map((token) => token.id)).size).toBe(40);
    // Group commit: far fewer statements than callers.
    expect(inserts().length).toBeLessThanOrEqual(4);
    const rows = await queryDatabase<{ id: string; token_hash: string; instance_uuid: string }>(
      cell.url,
      'SELECT id, token_hash, instance_uuid FROM console_auth_tokens',
    );
    expect(rows).toHaveLength(40);
    for (const token of issued) {
      expect(rows).toContainEqual({ id: String(token.id), token_hash: sha256Hex(token.token!), instance_uuid: token.row.instanceUuid });
    }
  });

  it('refuses only the colliding callers when their tokens collide inside one batch; the others get their own tokens', async () => {
    forcedTokens.push('collides', 'unique-1', 'collides', 'unique-2', 'collides');
    const results = await Promise.all(authorizeConcurrently(5).map(outcome));
    expect(results.map((result) => ('code' in result ? result.code : 'issued'))).toEqual([
      'issued',
      'issued',
      'TOKEN_IN_USE',
      'issued',
      'TOKEN_IN_USE',
    ]);
    expect(results.map((result) => ('issued' in result ? [result.issued.token, result.issued.row.instanceUuid] : null))).toEqual([
      ['collides', instance(0)],
      ['unique-1', instance(1)],
      null,
      ['unique-2', instance(3)],
      null,
    ]);
    const rows = await queryDatabase(cell.url, 'SELECT token_hash, instance_uuid FROM console_auth_tokens ORDER BY port');
    expect(rows).toEqual([
      { token_hash: sha256Hex('collides'), instance_uuid: instance(0) },
      { token_hash: sha256Hex('unique-1'), instance_uuid: instance(1) },
      { token_hash: sha256Hex('unique-2'), instance_uuid: instance(3) },
    ]);
  });

  it('fails a row the table refuses on its own: the rows batched with it are stored and returned to their callers', async () => {
    const row = (index: number, tokenHash: string): NewConsoleAuthTokenRow => ({
      tokenHash,
      consoleType: 'serial',
      host: 'hv2',
      port: 10_000 + index,
      tlsPort: null,
      internalAccessPath: null,
      instanceUuid: instance(index),
      expires: 2_000_000_000,
      accessUrlBase: null,
      objectVersion: '1.4',
      issuedBy: null,
    });
    const inserts = spyOnInserts();
    const results = await Promise.allSettled([
      repository.insert(row(0, sha256Hex('good-0'))),
      repository.insert(row(1, 'not a sha-256 digest')),
      repository.insert(row(2, sha256Hex('good-2'))),
    ]);
    // One statement of the three failed, then each row alone.
    expect(inserts().map((hashes) => hashes.length)).toEqual([3, 1, 1, 1]);
    expect(results[0]).toMatchObject({ status: 'fulfilled', value: { instanceUuid: instance(0), tokenHash: sha256Hex('good-0') } });
    expect(results[1].status).toBe('rejected');
    expect(postgresErrorCode((results[1] as PromiseRejectedResult).reason)).toBe('23514');
    expect(results[2]).toMatchObject({ status: 'fulfilled', value: { instanceUuid: instance(2), tokenHash: sha256Hex('good-2') } });
    const rows = await queryDatabase(cell.url, 'SELECT instance_uuid FROM console_auth_tokens ORDER BY port');
    expect(rows).toEqual([{ instance_uuid: instance(0) }, { instance_uuid: instance(2) }]);
  });

  it('fails every caller of a batch when the database cannot be asked, and stores nothing', async () => {
    // A statement that cannot finish in time stands in for a dead server: no row's fault, no retry.
    const blocker = new Client({ connectionString: cell.url, options: CELL_CONNECTION_OPTIONS });
    await blocker.connect();
    await blocker.query('BEGIN');
    await blocker.query('LOCK TABLE console_auth_tokens IN ACCESS EXCLUSIVE MODE');
    const results = await Promise.all(authorizeConcurrently(3).map(outcome));
    await blocker.query('COMMIT');
    await blocker.end();
    // 57014: the statement timeout cancelled the one INSERT of the three rows.
    expect(results).toEqual([{ code: '57014' }, { code: '57014' }, { code: '57014' }]);
    expect(await queryDatabase(cell.url, 'SELECT id FROM console_auth_tokens')).toEqual([]);
  });
});
