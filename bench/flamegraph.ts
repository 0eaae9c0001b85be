import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { renderPng } from './report';

/**
 * Reads a V8 CPU profile (node --cpu-prof) and prints where the busy time went (self and total time
 * per function, and per package), and writes a flame graph as SVG and PNG next to it:
 *
 *   node bench/run.cjs --role=flamegraph FILE.cpuprofile [--top=30] [--skip-ms=N]
 *
 * Idle time is left out: the graph and the percentages are of the time the process was busy.
 * `--skip-ms` leaves out the first N ms of the profile (the process's start-up, before the load).
 */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export function frameName(frame: CallFrame): string {
  const name = frame.functionName || '(anonymous)';
  if (!frame.url) return name;
  return `${name} ${shortUrl(frame.url)}:${frame.lineNumber + 1}`;
}

function shortUrl(url: string): string {
  const clean = url.replace(/^file:\/\//, '');
  const modules = clean.lastIndexOf('node_modules/');
  if (modules >= 0) return clean.slice(modules + 'node_modules/'.length);
  const dist = clean.indexOf('/dist/');
  if (dist >= 0) return clean.slice(dist + 1);
  return clean.startsWith('node:') ? clean : path.basename(clean);
}

/** Which part of the process a frame belongs to: a package, keyhole's own code, node internals. */
export function packageOf(frame: CallFrame): string {
  if (!frame.url) return frame.functionName.startsWith('(') ? frame.functionName : '(native)';
  const clean = frame.url.replace(/^file:\/\//, '');
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(clean.slice(clean.lastIndexOf('node_modules/') >= 0 ? clean.lastIndexOf('node_modules/') : 0));
  if (match) return match[1];
  if (clean.includes('/dist/')) return `keyhole ${clean.slice(clean.indexOf('/dist/') + 6).split('/').slice(0, 2).join('/')}`;
  if (clean.startsWith('node:')) return 'node internals';
  return 'other';
}

export interface ProfileSummary {
  busyMs: number;
  totalMs: number;
  self: { name: string; ms: number; percent: number }[];
  inclusive: { name: string; ms: number; percent: number }[];
  packages: { name: string; ms: number; percent: number }[];
}

/** The profile without its first `skipMs` (the process's start, before the load began). */
export function skipStart(profile: CpuProfile, skipMs: number): CpuProfile {
  if (skipMs <= 0 || !profile.samples || !profile.timeDeltas) return profile;
  let elapsedMs = 0;
  let first = 0;
  while (first < profile.samples.length && elapsedMs < skipMs) elapsedMs += profile.timeDeltas[first++] / 1000;
  return { ...profile, samples: profile.samples.slice(first), timeDeltas: profile.timeDeltas.slice(first) };
}

export function summarizeProfile(profile: CpuProfile, top = 30): ProfileSummary {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  // Sample weights: each sample stands for the time delta that follows it.
  const weight = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let index = 0; index < samples.length; index++) {
    const ms = (deltas[index + 1] ?? deltas[index] ?? 0) / 1000;
    weight.set(samples[index], (weight.get(samples[index]) ?? 0) + ms);
  }
  let busyMs = 0;
  let totalMs = 0;
  const self = new Map<string, number>();
  const inclusive = new Map<string, number>();
  const packages = new Map<string, number>();
  for (const [id, ms] of weight) {
    const node = byId.get(id);
    if (!node) continue;
    totalMs += ms;
    if (node.callFrame.functionName === '(idle)') continue;
    busyMs += ms;
    const name = frameName(node.callFrame);
    self.set(name, (self.get(name) ?? 0) + ms);
    const pkg = packageOf(node.callFrame);
    packages.set(pkg, (packages.get(pkg) ?? 0) + ms);
    const seen = new Set<string>();
    for (let cursor: number | undefined = id; cursor !== undefined; cursor = parent.get(cursor)) {
      const frame = byId.get(cursor)!.callFrame;
      const frameLabel = frameName(frame);
      if (frame.functionName === '(root)' || seen.has(frameLabel)) continue;
      seen.add(frameLabel);
      inclusive.set(frameLabel, (inclusive.get(frameLabel) ?? 0) + ms);
    }
  }
  const rank = (map: Map<string, number>) =>
    [...map.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, ms]) => ({ name, ms: Math.round(ms * 10) / 10, percent: Math.round((ms / busyMs) * 1000) / 10 }));
  return { busyMs, totalMs, self: rank(self), inclusive: rank(inclusive), packages: rank(packages) };
}

interface Box {
  name: string;
  pkg: string;
  ms: number;
  children: Box[];
}

function buildTree(profile: CpuProfile): Box {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const weight = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  for (let index = 0; index < samples.length; index++) {
    weight.set(samples[index], (weight.get(samples[index]) ?? 0) + (deltas[index + 1] ?? deltas[index] ?? 0) / 1000);
  }
  const visit = (node: ProfileNode): Box => {
    const children = (node.children ?? [])
      .map((id) => byId.get(id)!)
      .filter((child) => child.callFrame.functionName !== '(idle)')
      .map(visit)
      .filter((box) => box.ms > 0);
    // Merge siblings that are the same function.
    const merged = new Map<string, Box>();
    for (const child of children) {
      const existing = merged.get(child.name);
      if (existing) {
        existing.ms += child.ms;
        existing.children.push(...child.children);
      } else merged.set(child.name, child);
    }
    const ms = (weight.get(node.id) ?? 0) + [...merged.values()].reduce((sum, child) => sum + child.ms, 0);
    return { name: frameName(node.callFrame), pkg: packageOf(node.callFrame), ms, children: [...merged.values()].sort((a, b) => b.ms - a.ms) };
  };
  const root = profile.nodes[0];
  return visit(root);
}

function colorOf(pkg: string): string {
  if (pkg.startsWith('keyhole')) return '#e8a33d';
  if (pkg === 'node internals') return '#7fb3d5';
  if (pkg.startsWith('(')) return '#bbbbbb';
  let hash = 0;
  for (const character of pkg) hash = (hash * 31 + character.charCodeAt(0)) >>> 0;
  const hue = 90 + (hash % 200);
  return `hsl(${hue}, 45%, 62%)`;
}

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export function flameGraphSvg(profile: CpuProfile, title: string): string {
  const root = buildTree(profile);
  const width = 1600;
  const rowHeight = 17;
  const rows: string[] = [];
  let depthMax = 0;
  const draw = (box: Box, x: number, depth: number, scale: number): void => {
    const boxWidth = box.ms * scale;
    if (boxWidth < 0.8) return;
    depthMax = Math.max(depthMax, depth);
    rows.push(`${depth}|${x}|${boxWidth}|${box.name}|${box.pkg}|${box.ms}`);
    let childX = x;
    for (const child of box.children) {
      draw(child, childX, depth + 1, scale);
      childX += child.ms * scale;
    }
  };
  const scale = (width - 20) / Math.max(root.ms, 1e-9);
  draw(root, 10, 0, scale);
  const height = (depthMax + 1) * rowHeight + 60;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="DejaVu Sans Mono, monospace" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="10" y="20" font-size="14" font-family="DejaVu Sans, sans-serif">${escapeXml(title)} — busy ${Math.round(root.ms)} ms (idle left out); width = CPU time; orange = keyhole, blue = node internals</text>`,
  ];
  for (const row of rows) {
    const [depthText, xText, widthText, name, pkg, msText] = row.split('|');
    const y = height - 20 - (Number(depthText) + 1) * rowHeight;
    const boxWidth = Number(widthText);
    const label = `${name} (${Number(msText).toFixed(0)} ms, ${((Number(msText) / root.ms) * 100).toFixed(1)}%)`;
    const characters = Math.floor((boxWidth - 4) / 6.6);
    parts.push(
      `<g><title>${escapeXml(label)}</title><rect x="${Number(xText).toFixed(1)}" y="${y}" width="${boxWidth.toFixed(1)}" height="${rowHeight - 1}" fill="${colorOf(pkg)}" stroke="white" stroke-width="0.5"/>` +
        (characters >= 4 ? `<text x="${(Number(xText) + 2).toFixed(1)}" y="${y + 12}">${escapeXml(label.length > characters ? `${label.slice(0, characters - 1)}…` : label)}</text>` : '') +
        '</g>',
    );
  }
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

function main(): void {
  const args = process.argv.slice(2).filter((argument) => !argument.startsWith('--role='));
  const file = args.find((argument) => !argument.startsWith('--'));
  if (!file) {
    process.stderr.write('usage: node bench/run.cjs --role=flamegraph FILE.cpuprofile [--top=30] [--skip-ms=N]\n');
    process.exit(2);
  }
  const top = Number(args.find((argument) => argument.startsWith('--top='))?.slice(6) ?? 30);
  const skipMs = Number(args.find((argument) => argument.startsWith('--skip-ms='))?.slice(10) ?? 0);
  const profile = skipStart(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile, skipMs);
  const summary = summarizeProfile(profile, top);
  const out: string[] = [];
  out.push(`${file}: ${(summary.totalMs / 1000).toFixed(1)} s profiled, ${(summary.busyMs / 1000).toFixed(1)} s busy`);
  for (const [title, list] of [
    ['by package (self time)', summary.packages],
    ['self time', summary.self],
    ['total time (function and what it called)', summary.inclusive],
  ] as const) {
    out.push('', `${title}:`);
    for (const entry of list) out.push(`  ${entry.percent.toFixed(1).padStart(5)}%  ${entry.ms.toFixed(0).padStart(7)} ms  ${entry.name}`);
  }
  process.stdout.write(`${out.join('\n')}\n`);
  const base = file.replace(/\.cpuprofile$/, '');
  const svg = flameGraphSvg(profile, path.basename(file));
  writeFileSync(`${base}.flame.svg`, svg);
  writeFileSync(`${base}.summary.txt`, `${out.join('\n')}\n`);
  if (renderPng(svg, `${base}.flame.png`)) process.stdout.write(`\nflame graph: ${base}.flame.svg, ${base}.flame.png\n`);
}

if (process.argv.some((argument) => argument === '--role=flamegraph')) main();
