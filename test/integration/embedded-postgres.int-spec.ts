import { spawnSync } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Client } from 'pg';
import { type EmbeddedPostgresHandle, startEmbeddedPostgres } from '../../apps/cli/src/local/embedded-postgres';

const TIMEOUT_MS = 60_000;

describe('startEmbeddedPostgres', () => {
  let tempDir: string;
  let dataDir: string;
  const running: EmbeddedPostgresHandle[] = [];

  beforeAll(async () => {
    tempDir = await mkdtemp(path.join(os.tmpdir(), 'keyhole-embedded-postgres-'));
    // mkdtemp makes it 0700; as root the server runs as OS user postgres, which must get through.
    await chmod(tempDir, 0o711);
    dataDir = path.join(tempDir, 'cluster');
  });

  afterAll(async () => {
    await Promise.all(running.map((handle) => handle.stop()));
    await rm(tempDir, { recursive: true, force: true });
  });

  async function start(progress: string[]): Promise<EmbeddedPostgresHandle> {
    const handle = await startEmbeddedPostgres({ dataDir, onProgress: (line) => progress.push(line) });
    running.push(handle);
    return handle;
  }

  async function query<T>(url: string, sql: string): Promise<T[]> {
    const client = new Client({ connectionString: url });
    await client.connect();
    try {
      return (await client.query(sql)).rows as T[];
    } finally {
      await client.end();
    }
  }

  it(
    'initialises a cluster on first start and serves connections on 127.0.0.1',
    async () => {
      const progress: string[] = [];
      const handle = await start(progress);
      const adminUrl = new URL(handle.adminUrl);
      const port = Number(adminUrl.port);

      expect(adminUrl.hostname).toBe('127.0.0.1');
      expect(adminUrl.pathname).toBe('/postgres');
      expect(progress).toContain(`initialising embedded PostgreSQL in ${dataDir}`);
      expect(progress).toContain(`embedded PostgreSQL listening on 127.0.0.1:${port}`);
      expect(progress.join('\n')).not.toContain(decodeURIComponent(adminUrl.password));
      expect((await stat(`${dataDir}.password`)).mode & 0o777).toBe(0o600);

      expect(await query<{ one: number }>(handle.adminUrl, 'SELECT 1 AS one')).toEqual([{ one: 1 }]);
      await query(handle.adminUrl, 'CREATE DATABASE x1');
      expect(await query(handle.urlFor('x1'), 'SELECT current_database() AS name')).toEqual([{ name: 'x1' }]);

      await handle.stop();
      await handle.stop(); // idempotent
      expect(await connectErrorCode(port)).toBe('ECONNREFUSED');
    },
    TIMEOUT_MS,
  );

  it(
    'restarts on the existing cluster despite a stale postmaster.pid and keeps its databases',
    async () => {
      // What a killed run leaves behind: a lock file naming a process that no longer exists.
      const deadPid = spawnSync(process.execPath, ['-e', '']).pid;
      await writeFile(path.join(dataDir, 'postmaster.pid'), `${deadPid}\n${dataDir}\n`);

      const progress: string[] = [];
      const handle = await start(progress);
      const port = Number(new URL(handle.adminUrl).port);

      expect(progress.some((line) => line.startsWith('initialising'))).toBe(false);
      expect(progress).toContain(`embedded PostgreSQL listening on 127.0.0.1:${port}`);
      expect(await query(handle.adminUrl, "SELECT datname FROM pg_database WHERE datname = 'x1'")).toEqual([{ datname: 'x1' }]);
      expect(await query(handle.urlFor('x1'), 'SELECT 1 AS one')).toEqual([{ one: 1 }]);

      await handle.stop();
      expect(await connectErrorCode(port)).toBe('ECONNREFUSED');
    },
    TIMEOUT_MS,
  );

  (process.getuid?.() === 0 ? it : it.skip)(
    'names the directory the postgres OS user cannot enter',
    async () => {
      const privateDir = path.join(tempDir, 'private');
      await mkdir(privateDir, { mode: 0o700 });

      await expect(startEmbeddedPostgres({ dataDir: path.join(privateDir, 'cluster') })).rejects.toThrow(
        `PostgreSQL runs as OS user "postgres", which cannot enter ${privateDir} (mode 0700, owner uid 0)`,
      );
    },
    TIMEOUT_MS,
  );
});

/** Resolves with the error code of a TCP connect to 127.0.0.1:port, or undefined if it connected. */
function connectErrorCode(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(undefined);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code));
  });
}
