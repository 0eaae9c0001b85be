import { CELL_CONNECTION_OPTIONS } from '@keyhole/db';
import { INestApplicationContext } from '@nestjs/common';
import { CellDatabases, CellsService } from '@keyhole/cells';
import { KeyholeError, ManualClock, sha256Hex } from '@keyhole/core';
import { PurgeService, randomTokenGenerator, TokensService } from '@keyhole/tokens';
import { Client } from 'pg';
import { testConfig } from '../support/config';
import { createTestDatabase, queryDatabase } from '../support/databases';
import { startServices } from '../support/services';

const T0_MS = Date.UTC(2026, 10, 22, 12, 0, 0);
const T0 = T0_MS / 1000;
const INSTANCE_A = '11111111-1111-4111-8111-111111111111';
const INSTANCE_B = '22222222-2222-4222-8222-222222222222';

describe('TokensService on a real cell database', () => {
  let control: Awaited<ReturnType<typeof createTestDatabase>>;
  let cell: Awaited<ReturnType<typeof createTestDatabase>>;
  let app: INestApplicationContext;
  let tokens: TokensService;
  let logs: () => string;
  const clock = new ManualClock(T0_MS);
  let nextToken: string | undefined;

  beforeAll(async () => {
    control = await createTestDatabase('control');
    cell = await createTestDatabase('cell');
    const started = await startServices(
      testConfig(control.url, { KEYHOLE_PURGE_BATCH_SIZE: '2', KEYHOLE_PURGE_PAUSE_MS: '150', KEYHOLE_SESSION_RETENTION_MS: '3600000' }),
      {
        clock,
        tokenGenerator: () => nextToken ?? randomTokenGenerator(),
      },
    );
    app = started.app;
    logs = started.logs;
    await app.get(CellsService).register({ name: 'cell1', databaseUrl: cell.url, proxyUrl: 'https://console.example.com' });
    tokens = app.get(TokensService);
  });

  afterAll(async () => {
    await app?.close();
    await cell?.drop();
    await control?.drop();
  });

  beforeEach(async () => {
    clock.set(T0_MS);
    nextToken = undefined;
    await queryDatabase(cell.url, 'DELETE FROM console_auth_tokens');
  });

  const authorize = (overrides: Partial<Parameters<TokensService['authorize']>[1]> = {}) =>
    tokens.authorize('cell1', { instanceUuid: INSTANCE_A, consoleType: 'novnc', host: 'hv1', port: 5900, issuedBy: null, ...overrides });

  const codeOf = (promise: Promise<unknown>) =>
    promise.then(
      () => 'resolved',
      (error: unknown) => (error instanceof KeyholeError ? error.code : String(error)),
    );

  it('is valid up to expires-1 and invalid at expires and after (expires > now)', async () => {
    const issued = await authorize({ ttlSeconds: 10 });
    expect(issued.row.expires).toBe(T0 + 10);
    clock.set((T0 + 9) * 1000 + 999);
    expect((await tokens.validate('cell1', issued.token!)).id).toBe(issued.id);
    clock.set((T0 + 10) * 1000);
    expect(await codeOf(tokens.validate('cell1', issued.token!))).toBe('TOKEN_NOT_FOUND');
    clock.set((T0 + 11) * 1000);
    expect(await codeOf(tokens.validate('cell1', issued.token!))).toBe('TOKEN_NOT_FOUND');
  });

  it('stores only the SHA-256 of the token, nowhere the token itself', async () => {
    const issued = await authorize({ consoleType: 'serial', internalAccessPath: 'vm-42' });
    const rows = await queryDatabase(
      cell.url,
      'SELECT * FROM console_auth_tokens t LEFT JOIN console_auth_token_extras x USING (token_hash, expires)',
    );
    expect(rows).toHaveLength(1);
    expect(rows[0].token_hash).toBe(sha256Hex(issued.token!));
    expect(JSON.stringify(rows)).not.toContain(issued.token!);
    expect(rows[0].object_version).toBe('1.4');
    expect(logs()).not.toContain(issued.token!);
    expect(logs()).toContain(issued.fingerprint);
  });

  it('refuses a duplicate hash: the database has a unique constraint, the service answers TOKEN_IN_USE', async () => {
    nextToken = 'the-same-token-twice';
    await authorize();
    expect(await codeOf(authorize({ instanceUuid: INSTANCE_B }))).toBe('TOKEN_IN_USE');
    const rows = await queryDatabase(cell.url, 'SELECT instance_uuid FROM console_auth_tokens');
    expect(rows).toEqual([{ instance_uuid: INSTANCE_A }]);
    await expect(
      queryDatabase(
        cell.url,
        `INSERT INTO console_auth_tokens (token_hash, console_type, host, port, instance_uuid, expires)
         VALUES ($1, 'novnc', 'h', 1, $2, 1)`,
        [sha256Hex('the-same-token-twice'), INSTANCE_B],
      ),
    ).rejects.toThrow(/uniq_console_auth_tokens0token_hash/);
  });

  it('serves a token that Nova wrote into the same table (UUID token, Nova columns only)', async () => {
    const novaToken = '5b0a0c9e-2d4f-4b8e-9a77-0f6c1d2e3f40';
    await queryDatabase(
      cell.url,
      `INSERT INTO console_auth_tokens
         (created_at, token_hash, console_type, host, port, internal_access_path, instance_uuid, expires, access_url_base)
       VALUES (timezone('utc', now()), $1, 'serial', '192.0.2.7', 10000, NULL, $2, $3, 'ws://127.0.0.1:6083/')`,
      [sha256Hex(novaToken), INSTANCE_B, T0 + 600],
    );
    const found = await tokens.validate('cell1', novaToken);
    expect(found.toPrimitive()).toMatchObject({
      host: '192.0.2.7',
      port: 10000,
      instanceUuid: INSTANCE_B,
      objectVersion: '1.4',
      issuedBy: null,
    });
    expect(found.row.objectVersion).toBeNull();
    expect(found.accessUrl).toBe(`ws://127.0.0.1:6083/?token=${novaToken}`);
  });

  it('revokes by id and by instance, leaving other instances alone', async () => {
    const a1 = await authorize();
    const a2 = await authorize();
    const b1 = await authorize({ instanceUuid: INSTANCE_B });
    await tokens.revokeById('cell1', a1.id);
    expect(await codeOf(tokens.validate('cell1', a1.token!))).toBe('TOKEN_NOT_FOUND');
    expect(await codeOf(tokens.revokeById('cell1', a1.id))).toBe('TOKEN_NOT_FOUND');
    expect(await tokens.revokeByInstance('cell1', INSTANCE_A)).toEqual([a2.id]);
    expect(await codeOf(tokens.validate('cell1', a2.token!))).toBe('TOKEN_NOT_FOUND');
    expect((await tokens.validate('cell1', b1.token!)).id).toBe(b1.id);
    expect(await tokens.revokeByInstance('cell1', INSTANCE_A)).toEqual([]);
  });

  it('keeps a tombstone of each revoked hash until the token would have expired, and purges it after', async () => {
    await queryDatabase(cell.url, 'DELETE FROM revoked_token_hashes');
    const revoked = await authorize({ ttlSeconds: 30 });
    await tokens.revokeById('cell1', revoked.id);
    const database = await app.get(CellDatabases).get('cell1');
    expect(await database.tokens.isRevokedHash(sha256Hex(revoked.token!), T0 + 29)).toBe(true);
    expect(await database.tokens.isRevokedHash(sha256Hex(revoked.token!), T0 + 30)).toBe(false);
    expect(JSON.stringify(await queryDatabase(cell.url, 'SELECT * FROM revoked_token_hashes'))).not.toContain(revoked.token!);
    clock.set((T0 + 31) * 1000);
    await app.get(PurgeService).purgeCell('cell1');
    expect(await queryDatabase(cell.url, 'SELECT count(*)::int AS n FROM revoked_token_hashes')).toEqual([{ n: 0 }]);
  });

  it('purges exactly the expired rows (expires <= now), in batches, of every host or of one', async () => {
    for (let index = 0; index < 5; index += 1) {
      await authorize({ host: index % 2 ? 'hv1' : 'hv2', ttlSeconds: 10 });
    }
    const boundary = await authorize({ host: 'hv1', ttlSeconds: 20 });
    const valid = await authorize({ host: 'hv1', ttlSeconds: 21 });
    clock.set((T0 + 20) * 1000);
    const purge = app.get(PurgeService);
    // Batches of 2 (KEYHOLE_PURGE_BATCH_SIZE): 3 and 3 rows need several statements each, with a
    // pause (KEYHOLE_PURGE_PAUSE_MS) after each full batch.
    const hostPurge = await purge.purgeCell('cell1', { host: 'hv1' });
    expect(hostPurge).toMatchObject({ ran: true, tokens: 3, sessions: 0 });
    expect(hostPurge.durationMs).toBeGreaterThanOrEqual(150);
    expect(await queryDatabase(cell.url, `SELECT count(*)::int AS n FROM console_auth_tokens WHERE host = 'hv2'`)).toEqual([{ n: 3 }]);
    expect(await purge.purgeCell('cell1')).toMatchObject({ ran: true, tokens: 3 });
    const left = await queryDatabase(cell.url, 'SELECT id FROM console_auth_tokens');
    expect(left).toEqual([{ id: String(valid.id) }]);
    expect(boundary.row.expires).toBe(T0 + 20);
  });

  it('deletes sessions that ended before the retention period, and keeps live and recent ones', async () => {
    await queryDatabase(cell.url, 'DELETE FROM console_sessions');
    const insert = (id: string, endedAgo: string | null) =>
      queryDatabase(
        cell.url,
        `INSERT INTO console_sessions (id, token_fingerprint, instance_uuid, console_type, host, port, proxy_instance, ended_at)
         VALUES ($1, 'abcdefabcdef', $2, 'novnc', 'hv1', 5900, 'p', ${endedAgo === null ? 'NULL' : `to_timestamp($3::float8 / 1000) - $4::interval`})`,
        endedAgo === null ? [id, INSTANCE_A] : [id, INSTANCE_A, T0_MS, endedAgo],
      );
    await insert('00000000-0000-4000-8000-000000000001', '2 hours');
    await insert('00000000-0000-4000-8000-000000000002', '3 hours');
    await insert('00000000-0000-4000-8000-000000000003', '10 minutes');
    await insert('00000000-0000-4000-8000-000000000004', null);
    expect(await app.get(PurgeService).purgeCell('cell1')).toMatchObject({ ran: true, sessions: 2 });
    const left = await queryDatabase(cell.url, 'SELECT id FROM console_sessions ORDER BY id');
    expect(left.map((row) => row.id)).toEqual(['00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-000000000004']);
  });

  it('lets one replica purge a cell at a time: a purge that finds the lock held skips', async () => {
    await authorize({ ttlSeconds: 1 });
    clock.set((T0 + 5) * 1000);
    const other = new Client({ connectionString: cell.url, options: CELL_CONNECTION_OPTIONS });
    await other.connect();
    try {
      await other.query('SELECT pg_advisory_lock($1)', [0x6b68_7075_7267]);
      expect(await app.get(PurgeService).purgeCell('cell1')).toMatchObject({ ran: false, tokens: 0 });
      expect(await queryDatabase(cell.url, 'SELECT count(*)::int AS n FROM console_auth_tokens')).toEqual([{ n: 1 }]);
      await other.query('SELECT pg_advisory_unlock($1)', [0x6b68_7075_7267]);
      expect(await app.get(PurgeService).purgeCell('cell1')).toMatchObject({ ran: true, tokens: 1 });
    } finally {
      await other.end();
    }
  });

  it('gives unknown, malformed and oversized tokens the same answer as expired ones', async () => {
    for (const presented of ['', 'no such token', 'x'.repeat(257), 'tab\there', 'ünïcode']) {
      expect(await codeOf(tokens.validate('cell1', presented))).toBe('TOKEN_NOT_FOUND');
    }
    expect(await codeOf(tokens.validate('nowhere', 'x'))).toBe('CELL_NOT_FOUND');
  });
});
