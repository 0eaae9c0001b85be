import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { waitUntil } from '../wait';
import { freePort } from './network';
import { probeTcp } from './netns';
import { failOnExit, ManagedProcess, startProcess } from './processes';

const run = promisify(execFile);
const SSHD = '/usr/sbin/sshd';

/**
 * Debian's OpenSSH server, started by a test as a proxy node: its own host key and one authorized
 * client key (both made with ssh-keygen in a temporary directory), its own port, on loopback or inside
 * a network namespace. The client key is for the product under test; it never leaves the directory
 * except through `clientPrivateKey`.
 */
export interface Sshd {
  /** Where it listens (inside `namespace` when given). */
  readonly host: string;
  readonly port: number;
  readonly namespace: string | undefined;
  /** The user the client key logs in as (the user running the tests). */
  readonly user: string;
  /** `SHA256:...` of the host key, as `ssh-keygen -lf` prints it. */
  readonly hostKeyFingerprint: string;
  /** The authorized client key, OpenSSH private key format (unencrypted). */
  readonly clientPrivateKey: string;
  /** Path of that key (mode 0600), for OpenSSH's own client. */
  readonly clientKeyPath: string;
  /** The base64 body of the private key (what a leak check greps for). */
  readonly clientKeyBody: string;
  output(): string;
  /** SSH connections established to it right now (`ss` inside its namespace). */
  establishedConnections(): Promise<number>;
  /** Stops it and every connection it serves (as a node restart would), then starts it again on the same port and keys. */
  restart(): Promise<void>;
  /** Stops it; the next `restart()` starts it again. */
  stop(): Promise<void>;
  /** Stops it and removes its directory. Idempotent. */
  destroy(): Promise<void>;
}

export interface SshdOptions {
  /** Network namespace to run in (`ip netns exec`). Default: this process's. */
  namespace?: string;
  /** Listen address. Default 127.0.0.1. */
  address?: string;
  /** Default: a free port (picked in this process's namespace; a new namespace has them all free). */
  port?: number;
  /** `AllowTcpForwarding` (direct-tcpip channels). Default true; false makes a node only `mode: nc` can use. */
  allowTcpForwarding?: boolean;
  /** Start bound, default 15 000 ms. */
  timeoutMs?: number;
}

/** Makes keys, starts sshd and waits until it answers with its SSH banner. */
export async function startSshd(options: SshdOptions = {}): Promise<Sshd> {
  const directory = mkdtempSync(join(tmpdir(), 'keyhole-sshd-'));
  const host = options.address ?? '127.0.0.1';
  const port = options.port ?? (await freePort());
  const namespace = options.namespace;
  const timeoutMs = options.timeoutMs ?? 15_000;
  const hostKeyPath = join(directory, 'host_ed25519');
  const clientKeyPath = join(directory, 'client_ed25519');
  try {
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'keyhole-test-host', '-f', hostKeyPath]);
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'keyhole-test-client', '-f', clientKeyPath]);
  } catch (error) {
    rmSync(directory, { recursive: true, force: true });
    throw new Error(`ssh-keygen failed (Debian: apt-get install -y openssh-client): ${(error as Error).message}`, { cause: error });
  }
  const { stdout } = await run('ssh-keygen', ['-l', '-f', `${hostKeyPath}.pub`]);
  const hostKeyFingerprint = /SHA256:[A-Za-z0-9+/]+/.exec(stdout)?.[0];
  if (hostKeyFingerprint === undefined) {
    throw new Error(`ssh-keygen -lf printed no SHA256 fingerprint: ${stdout}`);
  }
  const clientPrivateKey = readFileSync(clientKeyPath, 'utf8');
  const clientKeyBody = clientPrivateKey
    .split('\n')
    .filter((line) => line && !line.startsWith('-----'))
    .join('');
  // Privilege separation directory, which Debian creates only when its service starts.
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const args = [
    '-D', // foreground: the harness owns the process
    '-e', // log to stderr
    '-f',
    '/dev/null',
    '-p',
    String(port),
    '-o',
    `ListenAddress=${host}`,
    '-o',
    `HostKey=${hostKeyPath}`,
    '-o',
    `AuthorizedKeysFile=${clientKeyPath}.pub`,
    '-o',
    `PidFile=${join(directory, 'sshd.pid')}`,
    '-o',
    'UsePAM=no',
    '-o',
    'StrictModes=no',
    '-o',
    'PasswordAuthentication=no',
    '-o',
    'KbdInteractiveAuthentication=no',
    '-o',
    'PermitRootLogin=prohibit-password',
    '-o',
    `AllowTcpForwarding=${options.allowTcpForwarding === false ? 'no' : 'yes'}`,
    // `mode: nc` opens one exec session per console on the shared connection; OpenSSH's default of 10
    // sessions per connection would refuse the eleventh.
    '-o',
    'MaxSessions=100',
    '-o',
    'LogLevel=VERBOSE',
  ];

  let current: ManagedProcess | undefined;
  const start = async (): Promise<void> => {
    const started =
      namespace === undefined
        ? await startProcess(SSHD, args, { name: 'sshd' })
        : await startProcess('ip', ['netns', 'exec', namespace, SSHD, ...args], { name: `sshd in ${namespace}` });
    current = started;
    const banner = waitUntil(
      async () => {
        const probe = await probeTcp(namespace ?? 'root', host, port, { timeoutMs: 1_000, readBytes: 4 });
        return probe.result === 'open' && probe.bytes.toString('latin1') === 'SSH-' ? true : undefined;
      },
      timeoutMs,
      () => `sshd to answer on ${host}:${port}${namespace === undefined ? '' : ` in ${namespace}`}:\n${started.output()}`,
      { intervalMs: 100 },
    );
    await Promise.race([banner, failOnExit(started, 'sshd', 'while starting')]);
  };
  const stop = async (): Promise<void> => {
    if (current === undefined) {
      return;
    }
    // sshd's per-connection processes call setsid(), so stopping the listener's process group leaves
    // them serving: kill them too, as a reboot of the node would.
    const sessions = descendants(current.pid);
    await current.stop(3_000);
    for (const pid of sessions) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  };
  try {
    await start();
  } catch (error) {
    await stop();
    rmSync(directory, { recursive: true, force: true });
    throw error;
  }

  let destroyed: Promise<void> | undefined;
  return {
    host,
    port,
    namespace,
    user: userInfo().username,
    hostKeyFingerprint,
    clientPrivateKey,
    clientKeyPath,
    clientKeyBody,
    output: () => current?.output() ?? '',
    async establishedConnections() {
      const ss = ['-Htn', 'state', 'established', `( sport = :${port} )`];
      const { stdout: sockets } =
        namespace === undefined ? await run('ss', ss) : await run('ip', ['netns', 'exec', namespace, 'ss', ...ss]);
      return sockets.split('\n').filter((line) => line.trim() !== '').length;
    },
    async restart() {
      await stop();
      await start();
    },
    stop,
    destroy() {
      destroyed ??= (async () => {
        await stop();
        rmSync(directory, { recursive: true, force: true });
      })();
      return destroyed;
    },
  };
}

/** Every process below `root` (by parent pid, from /proc). */
function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) {
      continue;
    }
    try {
      // The parent pid is the second field after the command, which is in parentheses and may hold spaces.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
    } catch {
      // The process has exited meanwhile.
    }
  }
  const found: number[] = [];
  const pending = [root];
  while (pending.length > 0) {
    for (const child of children.get(pending.pop()!) ?? []) {
      found.push(child);
      pending.push(child);
    }
  }
  return found;
}
