import { readFileSync } from 'node:fs';
import { Figure, medianOf, Results, Sample } from './results';
import { formatNumber } from './stats';

/**
 * Compares two runs (before and after a change) as markdown:
 *
 *   node bench/run.cjs --role=compare BEFORE.json AFTER.json
 *
 * One table of the targets, one of the main medians of every figure both runs measured.
 */

const MAIN_METRICS: Record<string, string[]> = {
  'connect-sequential': ['p50', 'p99', 'perSecond', 'proxyCpuMsPerOp'],
  'connect-concurrent': ['p50', 'p99', 'perSecond', 'proxyCpuMsPerOp'],
  'connect-sequential-banner': ['p50', 'p99', 'perSecond', 'proxyCpuMsPerOp'],
  'connect-concurrent-banner': ['p50', 'p99', 'perSecond', 'proxyCpuMsPerOp'],
  'throughput-down': ['megabytesPerSecond'],
  'throughput-up': ['megabytesPerSecond'],
  flood: ['rejectedPerSecond', 'validP99Before', 'validP99During', 'validP99Ratio', 'proxyCpuMsPerOp'],
  'api-issue': ['perSecond', 'p50', 'p99', 'proxyCpuMsPerOp'],
  'api-check': ['perSecond', 'p50', 'p99', 'proxyCpuMsPerOp'],
  'api-check-rate': ['p50', 'p99', 'proxyCpuMsPerOp'],
  purge: ['rowsPerSecond', 'checkP99Before', 'checkP99During', 'checkP99Ratio'],
};

function table(header: string[], rows: string[][]): string {
  return [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...rows.map((row) => `| ${row.join(' | ')} |`)].join(
    '\n',
  );
}

function systemsOf(figure: Figure): Sample['system'][] {
  return [...new Set(figure.samples.map((sample) => sample.system))];
}

export function compare(before: Results, after: Results): string {
  const out: string[] = [];
  const describe = (run: Results): string => {
    const { productCommit, product, nodePath } = run.settings as { productCommit?: string; product?: string; nodePath?: string };
    return `${run.startedAt} (${productCommit ?? product ?? 'unknown'}${nodePath ? `, NODE_PATH ${nodePath}` : ''})`;
  };
  out.push(`before: ${describe(before)}; after: ${describe(after)}`);
  out.push('');
  out.push(
    table(
      ['#', 'target', 'wanted', 'before', 'after'],
      after.targets.map((target) => {
        const previous = before.targets.find((candidate) => candidate.id === target.id);
        const verdict = (met: boolean | null | undefined): string => (met === null ? 'n/a' : met ? 'met' : 'missed');
        return [
          target.figure,
          target.description,
          `${target.comparison} ${formatNumber(target.threshold)} ${target.unit}`,
          previous ? `${formatNumber(previous.value)} ${previous.unit} (${verdict(previous.met)})` : '-',
          `${formatNumber(target.value)} ${target.unit} (${verdict(target.met)})`,
        ];
      }),
    ),
  );
  out.push('');
  const rows: string[][] = [];
  for (const figure of after.figures) {
    const old = before.figures.find((candidate) => candidate.id === figure.id);
    const metrics = MAIN_METRICS[figure.id];
    if (!old || !metrics) {
      continue;
    }
    for (const system of systemsOf(figure)) {
      for (const metric of metrics) {
        const was = medianOf(old, system, metric);
        const now = medianOf(figure, system, metric);
        if (!Number.isFinite(was) && !Number.isFinite(now)) {
          continue;
        }
        rows.push([
          figure.id,
          system,
          metric,
          formatNumber(was),
          formatNumber(now),
          Number.isFinite(was) && was !== 0 ? `${formatNumber(now / was)}x` : '-',
        ]);
      }
    }
  }
  out.push(table(['figure', 'system', 'median', 'before', 'after', 'after / before'], rows));
  return `${out.join('\n')}\n`;
}

if (process.argv.includes('--role=compare')) {
  const files = process.argv.slice(2).filter((argument) => !argument.startsWith('--'));
  if (files.length !== 2) {
    process.stderr.write('usage: node bench/run.cjs --role=compare BEFORE.json AFTER.json\n');
    process.exit(2);
  }
  const [before, after] = files.map((file) => JSON.parse(readFileSync(file, 'utf8')) as Results);
  process.stdout.write(compare(before, after));
}
