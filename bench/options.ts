import { availableParallelism } from 'node:os';
import path from 'node:path';

/** Everything a run can be told on the command line (`npm run bench -- --quick --phases=connect,api`). */
export interface BenchOptions {
  quick: boolean;
  phases: Set<PhaseName>;
  rounds: number;
  /** Checkout whose dist/ is measured (default: this repository). */
  productDir: string;
  /** Rebuild dist/ when a source is newer than it (default true). */
  build: boolean;
  outDir: string;
  serverUrl: string;
  /** Write V8 CPU profiles of the proxy and the API into OUT/profiles. */
  profile: boolean;
  keepLogs: boolean;
  /** Extra module directory (NODE_PATH) for keyhole's processes, e.g. an optional native module to try. */
  nodePath?: string;
  /** KEYHOLE_* settings given to keyhole's API and proxy (`--env=NAME=VALUE,NAME=VALUE`), to compare settings. */
  keyholeEnvironment: Record<string, string>;
  /** Session counts of figure 3 (each capped by the open-file limit). */
  sessionCounts: number[];
  /** websockify forks a process per connection: its session figure stops here. */
  websockifySessions: number;
  purgeRows: number;
  proxyPoolSize: number;
  /** KEYHOLE_PROXY_WORKERS of the proxy (figure 3 always runs one process). */
  proxyWorkers: number;
  apiPoolSize: number;
  /** Durations, ms. */
  connectMs: number;
  sequentialMaxCount: number;
  throughputMs: number;
  floodMs: number;
  apiMs: number;
  checkRateMs: number;
  holdMs: number;
  concurrency: number;
  apiConcurrency: number;
}

export const PHASES = ['connect', 'throughput', 'sessions', 'flood', 'api', 'purge', 'routes'] as const;
export type PhaseName = (typeof PHASES)[number];

const USAGE = `npm run bench -- [options]

  --quick                 a short run (under 2 minutes): 1 round, short windows, 1,000 sessions, 100,000 purge rows
  --phases=a,b            only these figures: ${PHASES.join(', ')} (default all)
  --rounds=N              alternation rounds per figure (default 3, quick 1)
  --product=DIR           measure the dist/ of another checkout (e.g. a git worktree with a fix)
  --no-build              do not rebuild dist/ even when sources are newer
  --profile               V8 CPU profiles of the proxy and the API (OUT/profiles, .cpuprofile files)
  --sessions=1000,10000   session counts of figure 3 (capped by the open-file limit)
  --websockify-sessions=N cap of websockify's sessions (a process each; default 500, quick 200)
  --purge-rows=N          expired rows to purge (default 1000000, quick 100000)
  --proxy-pool=N          KEYHOLE_DB_POOL_SIZE of the proxy, per process (default 20)
  --proxy-workers=N|auto  KEYHOLE_PROXY_WORKERS of the proxy (default auto: half the cores, at least 1;
                          the sessions figure always runs one process)
  --api-pool=N            KEYHOLE_DB_POOL_SIZE of the token API (default 10)
  --out=DIR               results directory (default bench/results)
  --keep-logs             keep the processes' logs (printed path)
  --node-path=DIR         NODE_PATH for keyhole's processes: try an optional module (bufferutil) without installing it
  --env=NAME=VALUE,...    KEYHOLE_* settings for keyhole's API and proxy (e.g. --env=KEYHOLE_PURGE_PAUSE_MS=0)
  --postgres=URL          server to create the databases on (default $KEYHOLE_TEST_POSTGRES_URL or postgres://postgres@127.0.0.1:5432/postgres)
`;

export function parseOptions(argv: string[]): BenchOptions {
  const flags = new Map<string, string>();
  for (const argument of argv) {
    if (argument.startsWith('--role=')) {
      continue;
    }
    if (argument === '--help' || argument === '-h') {
      process.stdout.write(USAGE);
      process.exit(0);
    }
    const match = /^--([a-z-]+)(?:=(.*))?$/.exec(argument);
    if (!match) {
      throw new Error(`unknown argument ${argument}\n\n${USAGE}`);
    }
    flags.set(match[1], match[2] ?? 'true');
  }
  const known = new Set([
    'quick',
    'phases',
    'rounds',
    'product',
    'no-build',
    'profile',
    'sessions',
    'websockify-sessions',
    'purge-rows',
    'proxy-pool',
    'proxy-workers',
    'api-pool',
    'out',
    'keep-logs',
    'postgres',
    'node-path',
    'env',
  ]);
  for (const flag of flags.keys()) {
    if (!known.has(flag)) {
      throw new Error(`unknown option --${flag}\n\n${USAGE}`);
    }
  }
  const quick = flags.has('quick');
  const int = (name: string, fallback: number, min: number, max: number): number => {
    const raw = flags.get(name);
    if (raw === undefined) {
      return fallback;
    }
    const value = Number(raw);
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new Error(`--${name} must be an integer in ${min}..${max}`);
    }
    return value;
  };
  const phases = new Set<PhaseName>();
  for (const phase of (flags.get('phases') ?? PHASES.join(',')).split(',').filter(Boolean)) {
    if (!(PHASES as readonly string[]).includes(phase)) {
      throw new Error(`unknown phase ${phase} (one of ${PHASES.join(', ')})`);
    }
    phases.add(phase as PhaseName);
  }
  const root = path.resolve(__dirname, '..');
  const sessionCounts = (flags.get('sessions') ?? (quick ? '1000' : '1000,10000')).split(',').map((value) => {
    const count = Number(value);
    if (!Number.isInteger(count) || count < 1 || count > 10_000) {
      throw new Error('--sessions takes counts of 1..10000');
    }
    return count;
  });
  const keyholeEnvironment: Record<string, string> = {};
  for (const pair of (flags.get('env') ?? '').split(',').filter(Boolean)) {
    const setting = /^(KEYHOLE_[A-Z0-9_]+)=(.*)$/.exec(pair);
    if (!setting) {
      throw new Error(`--env takes KEYHOLE_NAME=VALUE pairs separated by commas, not ${pair}`);
    }
    keyholeEnvironment[setting[1]] = setting[2];
  }
  return {
    quick,
    phases,
    rounds: int('rounds', quick ? 1 : 3, 1, 10),
    productDir: path.resolve(flags.get('product') ?? root),
    build: !flags.has('no-build'),
    outDir: path.resolve(flags.get('out') ?? path.join(root, 'bench/results')),
    serverUrl: flags.get('postgres') ?? process.env.KEYHOLE_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    profile: flags.has('profile'),
    keepLogs: flags.has('keep-logs'),
    nodePath: flags.has('node-path') ? path.resolve(flags.get('node-path')!) : undefined,
    keyholeEnvironment,
    sessionCounts,
    websockifySessions: int('websockify-sessions', quick ? 200 : 500, 1, 2_000),
    purgeRows: int('purge-rows', quick ? 100_000 : 1_000_000, 1_000, 5_000_000),
    proxyPoolSize: int('proxy-pool', 20, 1, 200),
    // The generator, PostgreSQL and the consoles run on the same machine: the proxy gets half of it.
    proxyWorkers:
      flags.get('proxy-workers') === 'auto' || !flags.has('proxy-workers')
        ? Math.max(1, Math.floor(availableParallelism() / 2))
        : int('proxy-workers', 1, 1, 256),
    apiPoolSize: int('api-pool', 10, 1, 200),
    connectMs: quick ? 1_500 : 4_000,
    sequentialMaxCount: quick ? 150 : 400,
    throughputMs: quick ? 1_000 : 3_000,
    floodMs: quick ? 1_500 : 6_000,
    apiMs: quick ? 1_500 : 4_000,
    checkRateMs: quick ? 2_000 : 5_000,
    holdMs: quick ? 3_000 : 12_000,
    concurrency: 20,
    apiConcurrency: 16,
  };
}
