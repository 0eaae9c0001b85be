import { ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** A child process the harness started: its output for error messages, its exit, and a bounded stop. */
export interface ManagedProcess {
  readonly pid: number;
  readonly commandLine: string;
  /** stdout and stderr interleaved (the last 64 KiB), for error messages. */
  output(): string;
  hasExited(): boolean;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, then SIGKILL after `graceMs` (default 5000); resolves once it has exited. Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

const OUTPUT_LIMIT = 64 * 1024;
const running = new Set<ManagedProcess & { kill(signal: NodeJS.Signals): void }>();
let exitHookInstalled = false;

// If a test file dies without its afterAll, do not leave QEMU or websockify behind: the 'exit' event
// runs synchronously on normal exit of the jest worker, which is the most a child can be given in Node.
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const managed of running) managed.kill('SIGKILL');
  });
}

/**
 * Spawns `command` in its own process group (so helpers it forks, like websockify's per-connection
 * processes, are stopped with it) and resolves once the OS has started it; rejects if it cannot start.
 */
export async function startProcess(command: string, args: string[], env: Record<string, string> = {}): Promise<ManagedProcess> {
  installExitHook();
  const child: ChildProcess = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: { ...process.env, ...env } });
  let output = '';
  const append = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-OUTPUT_LIMIT);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);

  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  const pid = child.pid!;
  let exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      running.delete(managed);
      resolve(exitInfo);
    });
  });

  const kill = (signal: NodeJS.Signals): void => {
    if (exitInfo) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // The group is already gone.
    }
  };

  let stopping: Promise<void> | undefined;
  const managed = {
    pid,
    commandLine: [command, ...args].join(' '),
    output: () => output,
    hasExited: () => exitInfo !== undefined,
    exited,
    kill,
    stop(graceMs = 5_000): Promise<void> {
      stopping ??= (async () => {
        kill('SIGTERM');
        let timer: NodeJS.Timeout | undefined;
        const graceOver = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)));
        const first = await Promise.race([exited, graceOver]);
        clearTimeout(timer);
        if (first === 'timeout') {
          kill('SIGKILL');
          await exited;
        }
      })();
      return stopping;
    },
  };
  running.add(managed);
  return managed;
}

/** The process's exit as an error, for racing against a wait (`during` says what was awaited). */
export function failOnExit(managed: ManagedProcess, name: string, during: string): Promise<never> {
  return managed.exited.then(({ code, signal }) => {
    throw new Error(`${name} exited (code ${code}, signal ${signal}) ${during}.\n  command: ${managed.commandLine}\n  output:\n${managed.output()}`);
  });
}

/** The executable `command` would run from PATH, or undefined. */
export function findOnPath(command: string): string | undefined {
  for (const directory of (process.env.PATH ?? '').split(delimiter)) {
    if (!directory) continue;
    const candidate = join(directory, command);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not in this directory.
    }
  }
  return undefined;
}
