import { ChildProcess, spawn } from 'node:child_process';
import { accessSync, closeSync, constants, openSync, readFileSync } from 'node:fs';
import { basename, delimiter, join } from 'node:path';
import { waitUntil } from '../wait';

/**
 * A child process the harness (or the bench) started: its output for error messages, its exit, and
 * a bounded stop.
 */
export interface ManagedProcess {
  readonly pid: number;
  /** What error messages call it (default: the command's file name). */
  readonly name: string;
  readonly commandLine: string;
  /** stdout and stderr interleaved (the last 64 KiB), for error messages. */
  output(): string;
  hasExited(): boolean;
  /** Resolves when the process has exited (never rejects). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /**
   * `signal` (default SIGTERM) to the process group, SIGKILL after `graceMs` (default 5000); resolves
   * once the process has exited, after a SIGKILL to whatever it left in its group. Idempotent.
   */
  stop(graceMs?: number, signal?: NodeJS.Signals): Promise<void>;
}

export interface StartProcessOptions {
  /** The whole environment of the process (default: this process's). */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  name?: string;
  /**
   * Write stdout and stderr to this file instead of a pipe that this process reads: for a process
   * that writes a lot while this one measures (the bench). `output()` reads the file's end.
   */
  logFile?: string;
}

const OUTPUT_LIMIT = 64 * 1024;
const running = new Set<ManagedProcess & { kill(signal: NodeJS.Signals): void }>();
const exitCleanups = new Set<() => void>();

/**
 * Runs `cleanup` when this process exits (once, however often it is registered), so that a test
 * file that dies without its afterAll leaves nothing behind (QEMU, websockify, network labs). The
 * 'exit' event runs synchronously on normal exit of the jest worker: the most Node gives, so
 * `cleanup` must be synchronous.
 */
export function cleanUpOnExit(cleanup: () => void): void {
  if (exitCleanups.size === 0) {
    process.on('exit', () => {
      for (const registered of exitCleanups) {
        registered();
      }
    });
  }
  exitCleanups.add(cleanup);
}

function killRunning(): void {
  for (const managed of running) {
    managed.kill('SIGKILL');
  }
}

/**
 * Spawns `command` in its own process group (so helpers it forks, like websockify's per-connection
 * processes, are stopped with it) and resolves once the OS has started it; rejects if it cannot start.
 */
export async function startProcess(command: string, args: string[], options: StartProcessOptions = {}): Promise<ManagedProcess> {
  cleanUpOnExit(killRunning);
  const { logFile } = options;
  const fd = logFile === undefined ? undefined : openSync(logFile, 'w');
  let child: ChildProcess;
  try {
    child = spawn(command, args, {
      stdio: ['ignore', fd ?? 'pipe', fd ?? 'pipe'],
      detached: true,
      env: options.env ?? process.env,
      cwd: options.cwd,
    });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
  } finally {
    if (fd !== undefined) {
      closeSync(fd);
    }
  }
  let output = '';
  const append = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-OUTPUT_LIMIT);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);

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
    try {
      process.kill(-pid, signal);
    } catch {
      // The group is already gone.
    }
  };

  let stopping: Promise<void> | undefined;
  const managed = {
    pid,
    name: options.name ?? basename(command),
    commandLine: [command, ...args].join(' '),
    output: () => (logFile === undefined ? output : tailFile(logFile, OUTPUT_LIMIT)),
    hasExited: () => exitInfo !== undefined,
    exited,
    kill,
    stop(graceMs = 5_000, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
      stopping ??= (async () => {
        if (!exitInfo) {
          kill(signal);
          let timer: NodeJS.Timeout | undefined;
          const graceOver = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)));
          const first = await Promise.race([exited, graceOver]);
          clearTimeout(timer);
          if (first === 'timeout') {
            kill('SIGKILL');
          }
          await exited;
        }
        // Helpers left in the group, if any.
        kill('SIGKILL');
      })();
      return stopping;
    },
  };
  running.add(managed);
  return managed;
}

/** Stops every process started here that is still running. */
export async function stopAllProcesses(graceMs?: number): Promise<void> {
  await Promise.all([...running].map((managed) => managed.stop(graceMs)));
}

/** The process's exit as an error, for racing against a wait (`during` says what was awaited). */
export function failOnExit(managed: ManagedProcess, name: string, during: string): Promise<never> {
  return managed.exited.then(({ code, signal }) => {
    throw new Error(
      `${name} exited (code ${code}, signal ${signal}) ${during}.\n  command: ${managed.commandLine}\n  output:\n${managed.output()}`,
    );
  });
}

/** Waits until `pattern` appears in the process's output; fails when it exits first or after `timeoutMs`. */
export function waitForOutput(managed: ManagedProcess, pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  return waitUntil(
    () => {
      const match = pattern.exec(managed.output());
      if (match) {
        return match;
      }
      if (managed.hasExited()) {
        throw new Error(`${managed.name} exited before ${pattern}:\n${managed.output()}`);
      }
      return undefined;
    },
    timeoutMs,
    () => `${pattern} from ${managed.name}:\n${managed.output()}`,
    { intervalMs: 50 },
  );
}

/** The last `bytes` of a file ('' while it does not exist). */
export function tailFile(file: string, bytes: number): string {
  try {
    const content = readFileSync(file);
    return content.subarray(Math.max(0, content.length - bytes)).toString('utf8');
  } catch {
    return '';
  }
}

/** The executable `command` would run from PATH, or undefined. */
export function findOnPath(command: string): string | undefined {
  for (const directory of (process.env.PATH ?? '').split(delimiter)) {
    if (!directory) {
      continue;
    }
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
