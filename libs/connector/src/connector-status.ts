import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, readlink, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

/*
 * Each running connector keeps a status file `<run dir>/connector-<name>.json` (KEYHOLE_RUN_DIR,
 * default /run/keyhole): what it is, where it listens, its PID and its connection counts, rewritten
 * at most once a second while they change and removed when it stops. `keyhole connector status`
 * reads them; a file whose PID is gone (a connector that was killed) is reported as stale.
 */

const STATUS_PREFIX = 'connector-';
const STATUS_INTERVAL_MS = 1_000;

export interface ConnectorStatusRecord {
  name: string;
  mode: 'serve' | 'expose';
  pid: number;
  /** The UNIX socket it listens on (serve) or carries connections to (expose). */
  socket: string;
  /** TCP addresses it listens on (expose), `address:port`. */
  listening: string[];
  startedAt: string;
  connections: { live: number; total: number };
}

/** Keeps one connector's status file up to date. */
export class StatusFile {
  private readonly file: string;
  private dirty = true;
  private writing: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly runDir: string,
    private readonly record: ConnectorStatusRecord,
  ) {
    this.file = join(runDir, `${STATUS_PREFIX}${record.name}.json`);
  }

  /** Writes the file now and then once a second while the counts change. */
  async start(): Promise<void> {
    await mkdir(this.runDir, { recursive: true, mode: 0o755 });
    await this.flush();
    this.timer = setInterval(() => void this.flush(), STATUS_INTERVAL_MS);
    this.timer.unref();
  }

  setListening(addresses: string[]): void {
    this.record.listening = addresses;
    this.dirty = true;
  }

  update(connections: { live: number; total: number }): void {
    this.record.connections = connections;
    this.dirty = true;
  }

  async remove(): Promise<void> {
    clearInterval(this.timer);
    await this.writing;
    await rm(this.file, { force: true });
  }

  private flush(): Promise<void> {
    if (!this.dirty) {
      return this.writing;
    }
    this.dirty = false;
    const text = `${JSON.stringify(this.record)}\n`;
    // Written aside and renamed: a reader never sees half a file.
    const temporary = `${this.file}.${process.pid}.tmp`;
    this.writing = this.writing
      .then(() => writeFile(temporary, text, { mode: 0o644 }))
      .then(() => rename(temporary, this.file))
      .catch(() => undefined);
    return this.writing;
  }
}

/** A status file as `keyhole connector status` shows it. */
export interface ConnectorStatusRow {
  name: string;
  mode: string;
  /** `ip netns identify PID`: the named namespace the connector runs in ('' = none has a name). */
  netns: string;
  /** The inode of /proc/PID/ns/net (`net:[4026531840]`): tells namespaces apart, named or not. */
  netnsInode: string | null;
  pid: number;
  socket: string;
  listening: string;
  live: number;
  total: number;
  state: 'running' | 'stale';
}

/**
 * The connectors of this machine, from the status files in `runDir`. With `removeStale`, the files
 * of connectors whose process is gone are deleted after being listed.
 */
export async function listConnectors(runDir: string, removeStale = false): Promise<ConnectorStatusRow[]> {
  let names: string[];
  try {
    names = (await readdir(runDir)).filter((name) => name.startsWith(STATUS_PREFIX) && name.endsWith('.json')).sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
      return [];
    }
    throw error;
  }
  const rows: ConnectorStatusRow[] = [];
  for (const name of names) {
    const file = join(runDir, name);
    let record: ConnectorStatusRecord;
    try {
      record = JSON.parse(await readFile(file, 'utf8')) as ConnectorStatusRecord;
    } catch {
      // Removed meanwhile, or not ours.
      continue;
    }
    const running = isRunning(record.pid);
    rows.push({
      name: record.name,
      mode: record.mode,
      netns: running ? await namedNamespace(record.pid) : '',
      netnsInode: running ? await readlink(`/proc/${record.pid}/ns/net`).catch(() => null) : null,
      pid: record.pid,
      socket: record.socket,
      listening: record.listening.join(','),
      live: running ? record.connections.live : 0,
      total: record.connections.total,
      state: running ? 'running' : 'stale',
    });
    if (!running && removeStale) {
      await rm(file, { force: true });
    }
  }
  return rows;
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, owned by someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const run = promisify(execFile);

/** The name `ip netns` knows the process's network namespace by, or '' (the root namespace, or none named). */
async function namedNamespace(pid: number): Promise<string> {
  try {
    const { stdout } = await run('ip', ['netns', 'identify', String(pid)], { timeout: 5_000 });
    return stdout.trim();
  } catch {
    return '';
  }
}
