import { execFile, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { cleanUpOnExit, ManagedProcess, startProcess, StartProcessOptions } from './processes';

/*
 * Network namespaces for tests of consoles the proxy must not be able to route to (STACK.md, "Network
 * namespaces"). A lab owns:
 * - one link-local /24 of its own (169.254.B.0/24), reserved by an `unreachable` route for it in the
 *   root namespace: the root namespace's default route leads off the machine, so without it a connect
 *   to an address of the lab that has no veth in the root namespace would leave the machine (or hang)
 *   instead of failing at once. `ip route add` fails when the route exists, which makes the
 *   reservation atomic between test files and engineers running tests side by side;
 * - namespaces named `kh<pid>l<lab><label>` with `lo` up, and veth pairs with one /30 of the lab's /24
 *   each (between two namespaces, or a namespace and the root namespace, whose connected /30 then wins
 *   over the unreachable /24);
 * - the processes it started inside them.
 * `destroy()` removes all of it, and so does a synchronous exit hook if the test file dies first.
 */

const run = promisify(execFile);
const PROBE_SCRIPT = join(__dirname, 'tcp-probe.cjs');
/** Bit of CAP_NET_ADMIN in /proc/self/status's CapEff. */
const CAP_NET_ADMIN = 12n;
/** Third octets a lab may take: away from 169.254.16.x (OpenNebula's 169.254.16.9) and 169.254.169.x (metadata services). */
const FIRST_BLOCK = 64;
const BLOCK_COUNT = 96;

/** The root namespace, for `link()` and `probeTcp()`. */
export const ROOT = 'root' as const;
export type Place = Namespace | typeof ROOT;

export interface Namespace {
  /** What `ip netns` calls it. */
  readonly name: string;
  /** What the test called it (`tenant`, `node`). */
  readonly label: string;
}

/** One veth pair: `a` and `b` are the two ends' addresses (one /30). */
export interface VethLink {
  readonly a: string;
  readonly b: string;
  /** The /30, e.g. `169.254.70.4/30`. */
  readonly cidr: string;
}

/** How a TCP connect ended: `refused`/`unreachable` come back at once, `timeout` means nothing answered. */
export type TcpProbeResult =
  { result: 'open'; bytes: Buffer } | { result: 'refused' | 'unreachable' | 'error'; code?: string } | { result: 'timeout' };

/** Fails with a clear message unless this process may create namespaces (root, CAP_NET_ADMIN). */
export function requireNetAdmin(): void {
  const line = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  const effective = line ? BigInt(`0x${line[1]}`) : 0n;
  if (((effective >> CAP_NET_ADMIN) & 1n) === 0n || process.getuid?.() !== 0) {
    throw new Error('network namespace tests need CAP_NET_ADMIN (run as root)');
  }
}

/**
 * Connects to `host:port` from inside `place` (a new `node` process there: a socket belongs to the
 * namespace of the process that opens it), optionally reads the first `readBytes` bytes.
 */
export async function probeTcp(
  place: Namespace | string,
  host: string,
  port: number,
  { timeoutMs = 3_000, readBytes = 0 }: { timeoutMs?: number; readBytes?: number } = {},
): Promise<TcpProbeResult> {
  const name = typeof place === 'string' ? place : place.name;
  const probe = [PROBE_SCRIPT, host, String(port), String(timeoutMs), String(readBytes)];
  const [file, args] = name === ROOT ? [process.execPath, probe] : ['ip', ['netns', 'exec', name, process.execPath, ...probe]];
  let stdout: string;
  try {
    // A loaded machine can take seconds to start node: the probe's own timeout is what counts.
    ({ stdout } = await run(file, args, { timeout: timeoutMs + 20_000 }));
  } catch (error) {
    throw new Error(`TCP probe of ${host}:${port} in ${name} failed: ${(error as Error).message}`, { cause: error });
  }
  const outcome = JSON.parse(stdout) as { result: TcpProbeResult['result']; code?: string; bytes?: string };
  if (outcome.result === 'open') {
    return { result: 'open', bytes: Buffer.from(outcome.bytes ?? '', 'base64') };
  }
  if (outcome.result === 'timeout') {
    return { result: 'timeout' };
  }
  return { result: outcome.result, code: outcome.code };
}

const liveLabs = new Set<NetworkLab>();
let labCount = 0;

function destroyLiveLabs(): void {
  for (const lab of liveLabs) {
    lab.destroySync();
  }
}

function ipSync(args: string[]): void {
  try {
    execFileSync('ip', args, { stdio: 'ignore', timeout: 10_000 });
  } catch {
    // Already gone: destroy is idempotent.
  }
}

function namespacePids(name: string): number[] {
  try {
    return execFileSync('ip', ['netns', 'pids', name], { encoding: 'utf8', timeout: 10_000 })
      .split('\n')
      .filter((line) => /^\d+$/.test(line.trim()))
      .map(Number);
  } catch {
    return [];
  }
}

async function ip(args: string[]): Promise<void> {
  try {
    await run('ip', args, { timeout: 15_000 });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? '';
    throw new Error(`ip ${args.join(' ')} failed: ${stderr.trim() || (error as Error).message}`, { cause: error });
  }
}

/** A set of namespaces, veths and routes that one test file creates and removes. */
export class NetworkLab {
  private readonly namespaces: Namespace[] = [];
  private readonly rootLinks: string[] = [];
  private readonly routes: string[] = [];
  private readonly processes: ManagedProcess[] = [];
  private nextLink = 0;
  private nextInterface = 0;
  private destroyed = false;

  private constructor(
    /** Unique per process and lab: the start of every name this lab creates. */
    readonly prefix: string,
    /** The lab's link-local /24, e.g. `169.254.70.0/24`; unreachable from the root namespace except through its veths. */
    readonly block: string,
    private readonly blockOctet: number,
  ) {}

  /**
   * Checks the capability, then reserves a free /24 of 169.254.0.0/16 for this lab. Call `destroy()`
   * in `afterAll`.
   */
  static async create(): Promise<NetworkLab> {
    requireNetAdmin();
    cleanUpOnExit(destroyLiveLabs);
    const prefix = `kh${process.pid}l${labCount++}`;
    const start = process.pid % BLOCK_COUNT;
    for (let offset = 0; offset < BLOCK_COUNT; offset++) {
      const octet = FIRST_BLOCK + ((start + offset) % BLOCK_COUNT);
      const block = `169.254.${octet}.0/24`;
      try {
        await run('ip', ['route', 'add', 'unreachable', block], { timeout: 15_000 });
      } catch {
        continue; // Another lab (or something else) uses this /24.
      }
      const lab = new NetworkLab(prefix, block, octet);
      lab.routes.push(block);
      liveLabs.add(lab);
      return lab;
    }
    throw new Error('no free 169.254.X.0/24 for a network lab: are old labs left behind? (ip route show type unreachable)');
  }

  /** Creates namespace `label` (lowercase letters and digits, at most 8) with `lo` up. */
  async namespace(label: string): Promise<Namespace> {
    this.assertLive();
    if (!/^[a-z0-9]{1,8}$/.test(label)) {
      throw new Error(`namespace label ${JSON.stringify(label)}: use 1-8 lowercase letters or digits`);
    }
    const namespace = { name: `${this.prefix}${label}`, label };
    await ip(['netns', 'add', namespace.name]);
    this.namespaces.push(namespace);
    await ip(['-n', namespace.name, 'link', 'set', 'lo', 'up']);
    return namespace;
  }

  /**
   * A veth pair between `a` and `b` (namespaces, or ROOT for one of them) with the next /30 of the
   * lab's /24: `a` gets its first address, `b` the second.
   */
  async link(a: Place, b: Place): Promise<VethLink> {
    this.assertLive();
    const index = this.nextLink++;
    if (index >= 64) {
      throw new Error(`a lab has 64 links at most (${this.block})`);
    }
    const base = `169.254.${this.blockOctet}`;
    const link = { a: `${base}.${index * 4 + 1}`, b: `${base}.${index * 4 + 2}`, cidr: `${base}.${index * 4}/30` };
    // Interface names are at most 15 characters and live in the root namespace until moved.
    const nameA = `${this.prefix}v${this.nextInterface++}`;
    const nameB = `${this.prefix}v${this.nextInterface++}`;
    await ip(['link', 'add', nameA, 'type', 'veth', 'peer', 'name', nameB]);
    // Until both ends are moved they are root links: remember them so destroy() can remove them.
    this.rootLinks.push(nameA);
    for (const [place, name, address] of [
      [a, nameA, link.a],
      [b, nameB, link.b],
    ] as const) {
      const scope = place === ROOT ? [] : ['-n', place.name];
      if (place !== ROOT) {
        await ip(['link', 'set', name, 'netns', place.name]);
      }
      await ip([...scope, 'address', 'add', `${address}/30`, 'dev', name]);
      await ip([...scope, 'link', 'set', name, 'up']);
    }
    return link;
  }

  /** Adds `ip route add unreachable CIDR` in the root namespace until destroy(). */
  async unreachable(cidr: string): Promise<void> {
    this.assertLive();
    await ip(['route', 'add', 'unreachable', cidr]);
    this.routes.push(cidr);
  }

  /**
   * Starts `command` inside `namespace` (`ip netns exec`, which execs it: the pid is the command's),
   * through startProcess, so it is stopped with the lab or when the test file dies.
   */
  async start(namespace: Namespace, command: string, args: string[], options: StartProcessOptions = {}): Promise<ManagedProcess> {
    this.assertLive();
    const started = await startProcess('ip', ['netns', 'exec', namespace.name, command, ...args], {
      name: options.name ?? `${command} in ${namespace.label}`,
      ...options,
    });
    this.processes.push(started);
    return started;
  }

  /** `probeTcp` from inside `place`. */
  probeTcp(place: Place, host: string, port: number, options?: { timeoutMs?: number; readBytes?: number }): Promise<TcpProbeResult> {
    return probeTcp(place, host, port, options);
  }

  /** Stops the lab's processes, deletes its namespaces (and so their veths), root veths and routes. Idempotent. */
  async destroy(): Promise<void> {
    await Promise.all(this.processes.map((managed) => managed.stop(3_000)));
    this.destroySync();
  }

  /** What destroy() removes, synchronously (the exit hook); processes are killed by startProcess's own hook. */
  destroySync(): void {
    if (this.destroyed) {
      return;
    }
    this.destroyed = true;
    liveLabs.delete(this);
    for (const namespace of this.namespaces) {
      // A namespace lives on while a process is in it (sshd's sessions leave their process group).
      for (const pid of namespacePids(namespace.name)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
      ipSync(['netns', 'del', namespace.name]);
    }
    for (const name of this.rootLinks) {
      ipSync(['link', 'del', name]);
    }
    for (const cidr of this.routes) {
      ipSync(['route', 'del', 'unreachable', cidr]);
    }
  }

  private assertLive(): void {
    if (this.destroyed) {
      throw new Error(`network lab ${this.prefix} is destroyed`);
    }
  }
}
