import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort, readFirstBytes } from '../test/support/real/network';
import { failOnExit, ManagedProcess, startProcess } from '../test/support/real/processes';
import type { Sshd } from '../test/support/real/sshd';
import { waitUntil } from '../test/support/wait';
import { onCleanup } from './procs';

const execFileAsync = promisify(execFile);

/**
 * A known_hosts file for OpenSSH's client that pins the sshd's host key: the key its banner
 * offers (ssh-keyscan), accepted only if its fingerprint is the one the harness made.
 */
async function pinnedKnownHosts(sshd: Sshd, file: string): Promise<void> {
  const { stdout: scanned } = await execFileAsync('ssh-keyscan', ['-T', '5', '-t', 'ed25519', '-p', String(sshd.port), sshd.host]);
  writeFileSync(file, scanned);
  const { stdout: fingerprints } = await execFileAsync('ssh-keygen', ['-l', '-f', file]);
  if (!fingerprints.includes(sshd.hostKeyFingerprint)) {
    throw new Error(`sshd on ${sshd.host}:${sshd.port} offered a host key other than ${sshd.hostKeyFingerprint}: ${fingerprints}`);
  }
}

/** The pid of the process listening on a TCP port of 127.0.0.1 (`ss -ltnp`), for the CPU accounting. */
export async function listenerPid(port: number): Promise<number> {
  const { stdout } = await execFileAsync('ss', ['-ltnpH', `sport = :${port}`]);
  const pid = /pid=(\d+)/.exec(stdout)?.[1];
  if (pid === undefined) {
    throw new Error(`no process listens on port ${port}: ${stdout}`);
  }
  return Number(pid);
}

/**
 * OpenSSH's own client as the jump (the anchor of the ssh route): one warm connection to the node
 * with a local forward (`-L`, the same `direct-tcpip` channel as `ssh -W`) per console, so that the
 * load generator reaches each console through a TCP port on 127.0.0.1. Returns those ports.
 */
export async function startOpenSshForwards(
  sshd: Sshd,
  consoles: Record<string, { host: string; port: number }>,
  /** A console that speaks first (its bytes through the forward say that the forwards work). */
  probe: string,
  workDir: string,
): Promise<{ ports: Record<string, number>; process: ManagedProcess }> {
  const knownHosts = path.join(workDir, 'known_hosts');
  await pinnedKnownHosts(sshd, knownHosts);
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
      ...['-o', `UserKnownHostsFile=${knownHosts}`, '-o', 'ExitOnForwardFailure=yes'],
      ...forwards,
      `${sshd.user}@${sshd.host}`,
    ],
    { name: 'ssh client (-L)', logFile: path.join(workDir, 'ssh-client.log') },
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
