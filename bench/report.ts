import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Figure, medianCpu, medianOf, Results, ROUTE_SYSTEMS, Sample, Target } from './results';
import { formatNumber, ratio } from './stats';
import { evaluateTargets } from './targets';

/**
 * Writes OUT/latest.json, OUT/latest.md and OUT/ratios.png (an SVG chart rendered by headless Chromium).
 * `node bench/run.cjs --role=report RESULTS.json OUT` writes them again from a run's JSON (targets re-evaluated).
 */
export async function writeReports(results: Results, outDir: string): Promise<void> {
  writeFileSync(path.join(outDir, 'latest.json'), `${JSON.stringify(results, jsonNumbers, 2)}\n`);
  writeFileSync(path.join(outDir, 'latest.md'), markdown(results));
  const svg = ratioChart(results);
  writeFileSync(path.join(outDir, 'ratios.svg'), svg);
  const rendered = renderPng(svg, path.join(outDir, 'ratios.png'));
  if (!rendered) {
    process.stdout.write('note: no Chromium found to render ratios.png; ratios.svg has the chart\n');
  }
}

function jsonNumbers(_key: string, value: unknown): unknown {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) {
      return null;
    }
    return Number.isInteger(value) ? value : Math.round(value * 1000) / 1000;
  }
  return value;
}

const SYSTEMS = ['direct', 'keyhole', 'websockify'] as const;

function metricValue(metric: string, value: number): string {
  if (Number.isInteger(value)) {
    return String(value);
  }
  if (/PerSecond$|perSecond|rowsPerSecond/.test(metric)) {
    return formatNumber(value, 4);
  }
  return formatNumber(value);
}

function systemsTable(figure: Figure): string {
  const present = SYSTEMS.filter((system) => figure.samples.some((sample) => sample.system === system));
  const metrics = Object.keys(figure.metricNotes);
  const header = [
    'metric',
    ...present,
    ...(present.includes('websockify') ? ['keyhole / websockify'] : []),
    ...(present.includes('direct') ? ['keyhole / direct'] : []),
  ];
  const rows = metrics.map((metric) => {
    const values = present.map((system) => medianOf(figure, system, metric));
    const keyhole = medianOf(figure, 'keyhole', metric);
    return [
      `${metric} (${figure.metricNotes[metric]})`,
      ...values.map((value) => metricValue(metric, value)),
      ...(present.includes('websockify') ? [formatNumber(ratio(keyhole, medianOf(figure, 'websockify', metric)))] : []),
      ...(present.includes('direct') ? [formatNumber(ratio(keyhole, medianOf(figure, 'direct', metric)))] : []),
    ];
  });
  const failures = present.map((system) => {
    const failed = figure.samples
      .filter((sample) => sample.system === system)
      .reduce((sum, sample) => sum + (sample.metrics.failed ?? 0), 0);
    return String(failed);
  });
  if (figure.samples.some((sample) => sample.metrics.failed !== undefined)) {
    rows.push(['failed attempts (all rounds)', ...failures]);
  }
  return table(header, rows);
}

/** The routes figure: a row per target (or why it did not run), with the differences and ratios its targets are about. */
function routesTable(figure: Figure): string {
  const metrics = Object.keys(figure.metricNotes);
  const latency = metrics.includes('p50');
  const extra = latency ? ['p50 added over via-direct (ms)'] : ['/ via-direct', '/ openssh'];
  const rows = ROUTE_SYSTEMS.map((system) => {
    const reason = figure.unavailable?.[system];
    if (reason !== undefined) {
      return [system, reason, ...Array<string>(metrics.length + extra.length - 1).fill('')];
    }
    const value = (metric: string): number => medianOf(figure, system, metric);
    return [
      system,
      ...metrics.map((metric) => metricValue(metric, value(metric))),
      ...(latency
        ? [formatNumber(value('p50') - medianOf(figure, 'via-direct', 'p50'))]
        : [
            formatNumber(ratio(value('megabytesPerSecond'), medianOf(figure, 'via-direct', 'megabytesPerSecond'))),
            formatNumber(ratio(value('megabytesPerSecond'), medianOf(figure, 'openssh', 'megabytesPerSecond'))),
          ]),
    ];
  });
  return table(['target', ...metrics.map((metric) => `${metric} (${figure.metricNotes[metric]})`), ...extra], rows);
}

function apiTable(figure: Figure): string {
  const metrics = Object.keys(figure.metricNotes);
  return table(
    ['metric', 'median', 'rounds'],
    metrics.map((metric) => [
      `${metric} (${figure.metricNotes[metric]})`,
      metricValue(metric, medianOf(figure, 'token-api', metric)),
      figure.samples.map((sample) => metricValue(metric, sample.metrics[metric])).join(', '),
    ]),
  );
}

function sessionsTable(figure: Figure): string {
  const columns = [
    'requested',
    'target',
    'opened',
    'failed',
    'alive',
    'closedDuringHold',
    'upstreamConnections',
    'rssBeforeMiB',
    'rssMiB',
    'pssMiB',
    'rssPerSessionKiB',
    'rssTotalPerSessionKiB',
    'pssPerSessionKiB',
    'processes',
    'fdsOpen',
    'openPerSecond',
  ];
  return table(
    ['system', ...columns],
    figure.samples.map((sample) => [sample.system, ...columns.map((column) => metricValue(column, sample.metrics[column]))]),
  );
}

function cpuTable(figure: Figure): string {
  const systems = [...new Set(figure.samples.map((sample) => sample.system))];
  const rows = systems
    .map((system): [Sample['system'], ReturnType<typeof medianCpu>] => [system, medianCpu(figure, system)])
    .filter(([, cpu]) => cpu !== undefined)
    .map(([system, cpu]) => [
      system,
      ...(['proxy', 'generator', 'database', 'consoles', 'machine', 'other'] as const).map((key) => formatNumber(cpu![key])),
    ]);
  if (rows.length === 0) {
    return '';
  }
  return `CPU, median, % of one core (proxy = the system under test: keyhole's proxy, websockify and its forks, or the token API; in the routes figure the route's proxy or OpenSSH's client, with its sshd or connector):\n\n${table(['system', 'proxy', 'generator', 'database', 'consoles', 'machine', 'other'], rows)}`;
}

function table(header: string[], rows: string[][]): string {
  return (
    [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...rows.map((row) => `| ${row.join(' | ')} |`)].join('\n') +
    '\n'
  );
}

function targetValue(target: Target): string {
  return `${formatNumber(target.value)} ${target.unit}`;
}

function verdict(target: Target): string {
  if (target.unavailable) {
    return 'not available in this build';
  }
  if (target.met === null) {
    return 'not measurable';
  }
  return target.met ? 'met' : '**missed**';
}

export function markdown(results: Results): string {
  const lines: string[] = [];
  const machine = results.machine;
  lines.push(`# keyhole benchmark: ${results.mode} run of ${results.startedAt.slice(0, 10)}`);
  lines.push('');
  lines.push(
    `${results.startedAt} to ${results.finishedAt} (${results.durationSeconds} s). Machine: ${machine.nproc} cores (${machine.cpuModel}), ${machine.memoryGiB} GiB, ` +
      `${machine.kernel}, node ${machine.node}, open files ${machine.openFileLimit.soft}/${machine.openFileLimit.hard}; load average at start ${machine.loadAverage.join(' ')}, at end ${(results.settings.loadAverageAtEnd as number[]).join(' ')}.`,
  );
  lines.push(
    `${String(results.settings.websockify)}; ${String(results.settings.qemu)}; ${String(results.settings.postgres).split(' on ')[0]}.`,
  );
  lines.push(
    `Medians of ${String(results.settings.rounds)} round(s); systems alternate within each round. Proxy pool ${String(results.settings.proxyPoolSize)}${results.settings.proxyWorkers === undefined ? '' : ` per process, proxy workers ${Number(results.settings.proxyWorkers)} (the sessions figure: 1)`}, API pool ${String(results.settings.apiPoolSize)}.${settingsLine(results.settings.keyholeEnvironment as Record<string, string> | undefined)}`,
  );
  lines.push('');
  lines.push('## Targets');
  lines.push('');
  lines.push(
    table(
      ['#', 'target', 'measured', 'wanted', 'verdict', 'note'],
      results.targets.map((target) => [
        target.figure,
        target.description,
        targetValue(target),
        `${target.comparison} ${formatNumber(target.threshold)} ${target.unit}`,
        verdict(target),
        target.note ?? '',
      ]),
    ),
  );
  lines.push('![ratios](ratios.png)');
  lines.push('');
  for (const figure of results.figures) {
    lines.push(`## ${figure.title}`);
    lines.push('');
    if (figure.id === 'sessions') {
      lines.push(sessionsTable(figure));
    } else if (figure.id.startsWith('routes-')) {
      lines.push(routesTable(figure));
    } else if (figure.samples.every((sample) => sample.system === 'token-api')) {
      lines.push(apiTable(figure));
    } else {
      lines.push(systemsTable(figure));
    }
    const cpu = cpuTable(figure);
    if (cpu) {
      lines.push(cpu);
    }
    const details = figure.samples.filter(
      (sample) => (sample.detail && Object.keys(sample.detail).length > 0) || (sample.cpu?.other ?? 0) > 50,
    );
    if (details.length > 0) {
      lines.push('Details:');
      lines.push('');
      for (const sample of details) {
        const noisy =
          (sample.cpu?.other ?? 0) > 50
            ? ` other processes on the machine used ${formatNumber(sample.cpu!.other)}% of a core meanwhile (less trustworthy)`
            : '';
        const detail = sample.detail && Object.keys(sample.detail).length > 0 ? ` \`${JSON.stringify(sample.detail)}\`` : '';
        lines.push(`- round ${sample.round + 1}, ${sample.system}:${detail}${noisy}`);
      }
      lines.push('');
    }
  }
  if (results.notes.length > 0) {
    lines.push('## Notes');
    lines.push('');
    for (const note of results.notes) {
      lines.push(`- ${note}`);
    }
    lines.push('');
  }
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------
// The chart: each target's measured value relative to its threshold, on a log scale; right of
// the line is met.

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export function ratioChart(results: Results): string {
  const targets = results.targets;
  const width = 1300;
  const rowHeight = 34;
  const top = 70;
  const left = 500;
  const right = 250;
  const plotWidth = width - left - right;
  const height = top + targets.length * rowHeight + 60;
  const minLog = -2;
  const maxLog = 2;
  const x = (score: number): number =>
    left + ((Math.min(maxLog, Math.max(minLog, Math.log10(score))) - minLog) / (maxLog - minLog)) * plotWidth;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Arial, sans-serif">`,
  );
  parts.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  parts.push(
    `<text x="20" y="30" font-size="19" font-weight="bold">keyhole vs targets (${escapeXml(results.mode)} run, ${escapeXml(results.startedAt.slice(0, 16).replace('T', ' '))} UTC)</text>`,
  );
  parts.push(
    `<text x="20" y="52" font-size="13" fill="#555">bar = measured / wanted (for "at most" targets: wanted / measured); log scale; right of the line = target met</text>`,
  );
  for (const tick of [0.01, 0.1, 1, 10, 100]) {
    const tx = x(tick);
    parts.push(
      `<line x1="${tx}" y1="${top - 6}" x2="${tx}" y2="${top + targets.length * rowHeight}" stroke="${tick === 1 ? '#222' : '#ddd'}" stroke-width="${tick === 1 ? 2 : 1}"/>`,
    );
    parts.push(
      `<text x="${tx}" y="${top + targets.length * rowHeight + 18}" font-size="12" text-anchor="middle" fill="#555">${tick}x</text>`,
    );
  }
  targets.forEach((target, index) => {
    const y = top + index * rowHeight;
    const label = `${target.figure}. ${target.description}`;
    parts.push(
      `<text x="${left - 10}" y="${y + 21}" font-size="13" text-anchor="end">${escapeXml(label.length > 72 ? `${label.slice(0, 70)}…` : label)}</text>`,
    );
    if (!Number.isFinite(target.score)) {
      parts.push(`<text x="${x(1) + 8}" y="${y + 21}" font-size="12" fill="#888">not measured</text>`);
      return;
    }
    const start = x(1);
    const end = x(target.score);
    const color = target.met === null ? '#999' : target.met ? '#2e8b57' : '#c0392b';
    parts.push(
      `<rect x="${Math.min(start, end)}" y="${y + 7}" width="${Math.max(2, Math.abs(end - start))}" height="${rowHeight - 14}" fill="${color}" rx="2"/>`,
    );
    const valueText = `${formatNumber(target.value)} ${target.unit} (${target.comparison} ${formatNumber(target.threshold)})`;
    parts.push(`<text x="${left + plotWidth + 8}" y="${y + 21}" font-size="12" fill="${color}">${escapeXml(valueText)}</text>`);
  });
  const { productCommit, nodePath } = results.settings as { productCommit?: string; nodePath?: string };
  const footer = `keyhole ${productCommit ?? ''}${nodePath ? ` (NODE_PATH ${nodePath})` : ''}; ${results.machine.nproc} cores, ${results.machine.memoryGiB} GiB, node ${results.machine.node}; medians of ${String(results.settings.rounds)} round(s)`;
  parts.push(`<text x="20" y="${height - 12}" font-size="12" fill="#555">${escapeXml(footer)}</text>`);
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

function chromiumBinary(): string | undefined {
  for (const candidate of ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome']) {
    if (existsSync(candidate)) {
      return candidate;
    }
  }
  return undefined;
}

/** Renders the SVG to PNG with headless Chromium (no network); false when there is no Chromium. */
export function renderPng(svg: string, pngFile: string): boolean {
  const chromium = chromiumBinary();
  if (!chromium) {
    return false;
  }
  const width = Number(/width="(\d+)"/.exec(svg)?.[1] ?? 1100);
  const height = Number(/height="(\d+)"/.exec(svg)?.[1] ?? 600);
  const directory = mkdtempSync(path.join(os.tmpdir(), 'keyhole-bench-chart-'));
  try {
    const page = path.join(directory, 'chart.html');
    writeFileSync(page, `<!doctype html><html><body style="margin:0">${svg}</body></html>`);
    const result = spawnSync(
      chromium,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--hide-scrollbars',
        '--no-first-run',
        `--user-data-dir=${path.join(directory, 'profile')}`,
        `--window-size=${width},${height}`,
        `--screenshot=${pngFile}`,
        `file://${page}`,
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    if (result.status !== 0 || !existsSync(pngFile)) {
      throw new Error(`chromium could not render the chart: ${result.stderr}`);
    }
    return true;
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}

if (process.argv.includes('--role=report')) {
  const [file, outDir] = process.argv.slice(2).filter((argument) => !argument.startsWith('--'));
  if (!file || !outDir) {
    process.stderr.write('usage: node bench/run.cjs --role=report RESULTS.json OUT_DIR\n');
    process.exit(2);
  }
  const results = JSON.parse(readFileSync(file, 'utf8')) as Results;
  results.targets = evaluateTargets(results);
  void writeReports(results, outDir);
}

/** The KEYHOLE_* settings a run gave keyhole, when it gave any. */
function settingsLine(environment: Record<string, string> | undefined): string {
  const pairs = Object.entries(environment ?? {});
  return pairs.length === 0 ? '' : ` keyhole settings: ${pairs.map(([name, value]) => `${name}=${value}`).join(', ')}.`;
}
