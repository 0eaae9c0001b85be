import { readdirSync, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import { stopAllProcesses } from '../test/support/real/processes';
import { withDeadline } from '../test/support/wait';

/**
 * The bench's cleanup on exit and signals, and what it reads about processes from /proc: CPU time
 * and memory. Its processes are the harness's (`startProcess` of test/support/real/processes.ts):
 * each in its own process group, its output in a log file rather than a pipe that the orchestrator
 * would have to read while it measures.
 */

const cleanups: (() => Promise<void> | void)[] = [];
let hooksInstalled = false;
let cleaningUp: Promise<void> | undefined;

/** Registers a cleanup step; steps run in reverse order of registration, each at most once. */
export function onCleanup(step: () => Promise<void> | void): void {
  installHooks();
  cleanups.push(step);
}

/** Runs every registered cleanup (databases, processes); safe to call more than once. */
export function runCleanup(): Promise<void> {
  cleaningUp ??= (async () => {
    while (cleanups.length > 0) {
      const step = cleanups.pop()!;
      try {
        await withDeadline(Promise.resolve(step()), 30_000, 'a cleanup step');
      } catch (error) {
        process.stderr.write(`cleanup: ${error instanceof Error ? error.message : String(error)}\n`);
      }
    }
    await stopAllProcesses(3_000);
  })();
  return cleaningUp;
}

function installHooks(): void {
  if (hooksInstalled) {
    return;
  }
  hooksInstalled = true;
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\n${signal}: stopping every process and dropping the databases...\n`);
      // A second signal while cleaning up kills at once.
      process.once(signal, () => process.exit(130));
      void runCleanup().finally(() => process.exit(130));
    });
  }
  // Last resort (an exception that skipped the finally blocks): startProcess kills what is left on exit.
}

/** A pause between measurements (pacing, not a wait for a state: that is `waitUntil`). */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------------
// /proc readings

const CLOCK_TICKS_PER_SECOND = 100; // USER_HZ on Linux x86-64
const PAGE_KIB = 4;

interface ProcStat {
  pid: number;
  ppid: number;
  pgrp: number;
  /** utime + stime, in ticks. */
  ownTicks: number;
  /** cutime + cstime: children that exited and were waited for. */
  childTicks: number;
  rssKib: number;
  /** Start time since boot, in ticks: tells a new process from an old one with the same pid. */
  startTicks: number;
}

function readStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name is in parentheses and may contain spaces: split after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state) of proc(5).
  return {
    pid,
    ppid: Number(fields[1]),
    pgrp: Number(fields[2]),
    ownTicks: Number(fields[11]) + Number(fields[12]),
    childTicks: Number(fields[13]) + Number(fields[14]),
    rssKib: Number(fields[21]) * PAGE_KIB,
    startTicks: Number(fields[19]),
  };
}

function allPids(): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .map(Number);
}

/** Every live process of a process group. */
export function groupPids(pgid: number): number[] {
  return allPids().filter((pid) => readStat(pid)?.pgrp === pgid);
}

/**
 * Machine-wide busy CPU time (all cores), seconds, from /proc/stat: user, nice, system, irq and
 * softirq. Guest time is part of user already; steal is another VM's, reported apart.
 */
export function machineCpu(): { busy: number; steal: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0];
  const [user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
  return { busy: (user + nice + system + irq + softirq) / CLOCK_TICKS_PER_SECOND, steal: (steal ?? 0) / CLOCK_TICKS_PER_SECOND };
}

/** CPU ticks (own + waited-for children) and parent of every process, keyed by pid. */
export interface ProcessSnapshot {
  ticks: Map<number, number>;
  started: Map<number, number>;
  parent: Map<number, number>;
  group: Map<number, number>;
}

export function snapshotProcesses(): ProcessSnapshot {
  const ticks = new Map<number, number>();
  const started = new Map<number, number>();
  const parent = new Map<number, number>();
  const group = new Map<number, number>();
  for (const pid of allPids()) {
    const stat = readStat(pid);
    if (!stat) {
      continue;
    }
    ticks.set(pid, stat.ownTicks + stat.childTicks);
    started.set(pid, stat.startTicks);
    parent.set(pid, stat.ppid);
    group.set(pid, stat.pgrp);
  }
  return { ticks, started, parent, group };
}

/**
 * CPU seconds `pids` used between two snapshots. A process that started meanwhile counts from
 * zero; one that exited meanwhile is lost unless its parent (in `pids`) waited for it.
 */
export function cpuBetween(before: ProcessSnapshot, after: ProcessSnapshot, pids: Iterable<number>): number {
  let ticks = 0;
  for (const pid of pids) {
    const end = after.ticks.get(pid);
    if (end === undefined) {
      continue;
    }
    // websockify forks a process per connection: a pid can be reused within a measurement.
    const same = before.started.get(pid) === after.started.get(pid);
    ticks += end - (same ? (before.ticks.get(pid) ?? 0) : 0);
  }
  return Math.max(0, ticks) / CLOCK_TICKS_PER_SECOND;
}

/** `root` and every process below it in `snapshot`. */
export function descendants(snapshot: ProcessSnapshot, root: number): Set<number> {
  const children = new Map<number, number[]>();
  for (const [pid, parentPid] of snapshot.parent) {
    const list = children.get(parentPid) ?? [];
    list.push(pid);
    children.set(parentPid, list);
  }
  const found = new Set<number>();
  const stack = [root];
  while (stack.length > 0) {
    const pid = stack.pop()!;
    if (found.has(pid)) {
      continue;
    }
    found.add(pid);
    stack.push(...(children.get(pid) ?? []));
  }
  return found;
}

export interface MemoryReading {
  processes: number;
  rssKib: number;
  /** Proportional set size: shared pages divided among their sharers (fair for forked helpers). */
  pssKib: number;
}

export function memoryOf(pids: readonly number[]): MemoryReading {
  let rssKib = 0;
  let pssKib = 0;
  let processes = 0;
  for (const pid of pids) {
    try {
      const rollup = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
      rssKib += Number(/^Rss:\s+(\d+)/m.exec(rollup)?.[1] ?? 0);
      pssKib += Number(/^Pss:\s+(\d+)/m.exec(rollup)?.[1] ?? 0);
      processes += 1;
    } catch {
      // exited meanwhile
    }
  }
  return { processes, rssKib, pssKib };
}

export function openFileCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

export function memAvailableKib(): number {
  const meminfo = readFileSync('/proc/meminfo', 'utf8');
  return Number(/^MemAvailable:\s+(\d+)/m.exec(meminfo)?.[1] ?? 0);
}

/** The soft limit on open files of this process (children inherit it). */
export function openFileLimit(): number {
  return openFileLimits().soft;
}

/** Whether this process may raise its hard limits (CAP_SYS_RESOURCE, bit 24 of CapEff). */
export function canRaiseLimits(): boolean {
  const status = readFileSync('/proc/self/status', 'utf8');
  const effective = /^CapEff:\s+([0-9a-f]+)/m.exec(status)?.[1];
  return effective !== undefined && (BigInt(`0x${effective}`) & (1n << 24n)) !== 0n;
}

export function hardOpenFileLimit(): number {
  return openFileLimits().hard;
}

/** This process's limits on open files, from /proc/self/limits ("unlimited" as 1,048,576; 1,024 if unreadable). */
export function openFileLimits(): { soft: number; hard: number } {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const match = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(limits);
  const value = (limit: string | undefined): number => (limit === undefined ? 1024 : limit === 'unlimited' ? 1_048_576 : Number(limit));
  return { soft: value(match?.[1]), hard: value(match?.[2]) };
}

export interface MachineInfo {
  hostname: string;
  nproc: number;
  cpuModel: string;
  memoryGiB: number;
  node: string;
  kernel: string;
  loadAverage: number[];
  openFileLimit: { soft: number; hard: number };
}

export function machineInfo(): MachineInfo {
  return {
    hostname: os.hostname(),
    nproc: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    kernel: `${os.type()} ${os.release()}`,
    loadAverage: os.loadavg().map((value) => Math.round(value * 100) / 100),
    openFileLimit: openFileLimits(),
  };
}

/** Newest modification time (ms) of any file under `directory` with one of `extensions`. */
export function newestMtimeMs(directory: string, extensions: string[]): number {
  let newest = 0;
  const visit = (dir: string): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) {
      const full = `${dir}/${entry.name}`;
      if (entry.isDirectory()) {
        visit(full);
      } else if (extensions.some((extension) => entry.name.endsWith(extension))) {
        newest = Math.max(newest, statSync(full).mtimeMs);
      }
    }
  };
  visit(directory);
  return newest;
}
