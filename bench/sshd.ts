import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort, readFirstBytes } from '../test/support/real/network';
import { failOnExit, ManagedProcess, startProcess } from '../test/support/real/processes';
import { waitUntil } from '../test/support/wait';
import { onCleanup } from './procs';

const execFileAsync = promisify(execFile);

/**
 * The SSH proxy node of the routes figure: Debian's OpenSSH server on 127.0.0.1, a port of its own,
 * with a host key and one authorized client key made by ssh-keygen in `directory` (removed at the
 * end of the run: the keys are throwaway, and a private key is not left behind in results/). Both
 * keyhole's ssh route and OpenSSH's own client (the anchor) go through it.
 */
export interface BenchSshd {
  host: string;
  port: number;
  /** The user the client key logs in as (the bench's own user; sshd needs a real account). */
  user: string;
  /** `SHA256:...` of the host key, as `ssh-keygen -lf` prints it. */
  hostKeyFingerprint: string;
  /** The client key (OpenSSH format, unencrypted) and its file (mode 0600). */
  clientPrivateKey: string;
  clientKeyPath: string;
  /** A known_hosts file that pins the host key, for OpenSSH's client. */
  knownHostsPath: string;
  process: ManagedProcess;
}

export async function startBenchSshd(directory: string, logFile: string): Promise<BenchSshd> {
  mkdirSync(directory, { recursive: true, mode: 0o700 });
  onCleanup(() => rmSync(directory, { recursive: true, force: true }));
  const hostKeyPath = path.join(directory, 'host_ed25519');
  const clientKeyPath = path.join(directory, 'client_ed25519');
  for (const [file, comment] of [
    [hostKeyPath, 'keyhole-bench-host'],
    [clientKeyPath, 'keyhole-bench-client'],
  ]) {
    rmSync(file, { force: true });
    rmSync(`${file}.pub`, { force: true });
    await execFileAsync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file]);
  }
  const { stdout } = await execFileAsync('ssh-keygen', ['-l', '-f', `${hostKeyPath}.pub`]);
  const hostKeyFingerprint = /SHA256:[A-Za-z0-9+/]+/.exec(stdout)?.[0];
  if (!hostKeyFingerprint) {
    throw new Error(`ssh-keygen -lf printed no SHA256 fingerprint: ${stdout}`);
  }
  const host = '127.0.0.1';
  const port = await freePort();
  const knownHostsPath = path.join(directory, 'known_hosts');
  writeFileSync(knownHostsPath, `[${host}]:${port} ${readFileSync(`${hostKeyPath}.pub`, 'utf8').split(' ').slice(0, 2).join(' ')}\n`);
  // Privilege separation directory, which Debian creates only when its own service starts.
  mkdirSync('/run/sshd', { recursive: true, mode: 0o755 });
  const sshd = await startProcess(
    '/usr/sbin/sshd',
    [
      '-D',
      '-e',
      '-f',
      '/dev/null',
      ...['-p', String(port)],
      ...['-o', `ListenAddress=${host}`],
      ...['-o', `HostKey=${hostKeyPath}`],
      ...['-o', `AuthorizedKeysFile=${clientKeyPath}.pub`],
      ...['-o', `PidFile=${path.join(directory, 'sshd.pid')}`],
      ...['-o', 'UsePAM=no', '-o', 'StrictModes=no', '-o', 'PasswordAuthentication=no'],
      ...['-o', 'PermitRootLogin=prohibit-password', '-o', 'AllowTcpForwarding=yes'],
      // The connect figure opens channels one after another on one connection; the default allows 10 sessions at once.
      ...['-o', 'MaxSessions=100'],
    ],
    { name: 'sshd', logFile },
  );
  onCleanup(() => sshd.stop(3_000));
  await Promise.race([
    waitUntil(
      async () => ((await readFirstBytes(port, 4, 1_000, host).catch(() => undefined))?.toString('latin1') === 'SSH-' ? true : undefined),
      15_000,
      () => `sshd to answer on ${host}:${port}:\n${sshd.output()}`,
      { intervalMs: 100 },
    ),
    failOnExit(sshd, 'sshd', 'while starting'),
  ]);
  return {
    host,
    port,
    user: userInfo().username,
    hostKeyFingerprint,
    clientPrivateKey: readFileSync(clientKeyPath, 'utf8'),
    clientKeyPath,
    knownHostsPath,
    process: sshd,
  };
}

/**
 * OpenSSH's own client as the jump (the anchor of the ssh route): one warm connection to the node
 * with a local forward (`-L`, the same `direct-tcpip` channel as `ssh -W`) per console, so that the
 * load generator reaches each console through a TCP port on 127.0.0.1. Returns those ports.
 */
export async function startOpenSshForwards(
  sshd: BenchSshd,
  consoles: Record<string, { host: string; port: number }>,
  /** A console that speaks first (its bytes through the forward say that the forwards work). */
  probe: string,
  logFile: string,
): Promise<{ ports: Record<string, number>; process: ManagedProcess }> {
  const ports: Record<string, number> = {};
  const forwards: string[] = [];
  for (const [name, target] of Object.entries(consoles)) {
    ports[name] = await freePort();
    forwards.push('-L', `127.0.0.1:${ports[name]}:${target.host}:${target.port}`);
  }
  const client = await startProcess(
    'ssh',
    [
      '-N',
      ...['-F', '/dev/null', '-i', sshd.clientKeyPath, '-p', String(sshd.port)],
      ...['-o', 'BatchMode=yes', '-o', 'IdentitiesOnly=yes', '-o', 'StrictHostKeyChecking=yes'],
      ...['-o', `UserKnownHostsFile=${sshd.knownHostsPath}`, '-o', 'ExitOnForwardFailure=yes'],
      ...forwards,
      `${sshd.user}@${sshd.host}`,
    ],
    { name: 'ssh client (-L)', logFile },
  );
  onCleanup(() => client.stop(3_000));
  await Promise.race([
    waitUntil(
      async () => ((await readFirstBytes(ports[probe], 1, 1_000).catch(() => undefined)) ? true : undefined),
      15_000,
      () => `OpenSSH's forward on 127.0.0.1:${ports[probe]}:\n${client.output()}`,
      { intervalMs: 100 },
    ),
    failOnExit(client, 'ssh', 'while starting its forwards'),
  ]);
  return { ports, process: client };
}
