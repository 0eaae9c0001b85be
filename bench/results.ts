import type { MachineInfo } from './procs';
import { median } from './stats';

/**
 * The targets of the routes figure: keyhole's proxy with a routes file whose one route is `direct`,
 * `ssh` (through the bench's sshd) or `connector` (to a `keyhole connector serve` on a UNIX
 * socket), and OpenSSH's own client through the same sshd (the anchor of the ssh route).
 */
export const ROUTE_SYSTEMS = ['via-direct', 'openssh', 'via-ssh', 'via-connector'] as const;
export type RouteSystemName = (typeof ROUTE_SYSTEMS)[number];

/** The systems measured: keyhole's proxy, Debian's websockify, and no proxy at all; and the routes figure's targets. */
export type SystemName = 'direct' | 'keyhole' | 'websockify' | RouteSystemName;

/**
 * CPU used during one measurement, in percent of one core (200 = both cores of a 2-core machine):
 * the system under test, the load generators, the cell/control database backends, the consoles
 * (upstreams and QEMU), the whole machine, and `other`: what processes that are not the bench's
 * used meanwhile (other users of the machine), which makes a measurement less trustworthy.
 */
export type CpuUsage = Record<'proxy' | 'generator' | 'database' | 'consoles' | 'machine' | 'other', number>;

/** One measurement of one system in one round. */
export interface Sample {
  round: number;
  system: SystemName | 'token-api';
  metrics: Record<string, number>;
  cpu?: CpuUsage;
  detail?: Record<string, unknown>;
}

export interface Figure {
  id: string;
  title: string;
  /** What the metrics mean, units included. */
  metricNotes: Record<string, string>;
  samples: Sample[];
  /** Systems of the figure that did not run, and why (a route kind this build does not support). */
  unavailable?: Partial<Record<SystemName, string>>;
}

export interface Target {
  id: string;
  figure: string;
  description: string;
  /** The measured value the target is about (a ratio or an absolute figure). */
  value: number;
  unit: string;
  comparison: 'at most' | 'at least';
  threshold: number;
  met: boolean | null;
  /** Value relative to the threshold, >= 1 when met (for the chart). */
  score: number;
  /** The system the target is about did not run in this build (met is null, the note says why). */
  unavailable?: boolean;
  note?: string;
}

export interface Results {
  version: 1;
  mode: 'quick' | 'full';
  startedAt: string;
  finishedAt: string;
  durationSeconds: number;
  machine: MachineInfo;
  settings: Record<string, unknown>;
  figures: Figure[];
  targets: Target[];
  notes: string[];
  diagnostics: Record<string, unknown>;
}

/** The median over rounds of one metric of one system in a figure. */
export function medianOf(figure: Figure | undefined, system: Sample['system'], metric: string): number {
  if (!figure) {
    return Number.NaN;
  }
  return median(figure.samples.filter((sample) => sample.system === system).map((sample) => sample.metrics[metric] ?? Number.NaN));
}

export function medianCpu(figure: Figure | undefined, system: Sample['system']): CpuUsage | undefined {
  const samples = figure?.samples.filter((sample) => sample.system === system && sample.cpu) ?? [];
  if (samples.length === 0) {
    return undefined;
  }
  const keys = Object.keys(samples[0].cpu!) as (keyof CpuUsage)[];
  return Object.fromEntries(keys.map((key) => [key, median(samples.map((sample) => sample.cpu![key]))])) as CpuUsage;
}
