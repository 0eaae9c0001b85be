import { isAbsolute } from 'node:path';
import { parseArgs, ParseArgsConfig } from 'node:util';
import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { createLogger, LogLevelName } from '@keyhole/observability';
import { listConnectors, StatusFile } from './connector-status';
import { ConnectorMetrics } from './connector.metrics';
import { DEFAULT_EXPOSE_ADDRESS, ExposeConnector } from './expose-connector';
import { ServeConnector } from './serve-connector';
import { loadTproxyFile, selectTproxyEntries } from './tproxy-file';

/*
 * The connector's command line, shared by `keyhole connector ...` (apps/cli) and the connector's
 * own entry point (apps/connector): `serve`, `expose` and `status`.
 */

/** A mistake in how the command was called (exit code 2). */
export class ConnectorUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConnectorUsageError';
  }
}

export interface ConnectorCommandContext {
  args: string[];
  /** KEYHOLE_RUN_DIR: where status files are. */
  runDir: string;
  logLevel: LogLevelName;
  out: (line: string) => void;
  /** Where log lines go (default standard output); tests read them. */
  logger?: Logger;
}

export interface ConnectorCommand {
  name: 'serve' | 'expose' | 'status';
  usage: string;
  summary: string;
  run(context: ConnectorCommandContext): Promise<number>;
}

const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const DEFAULT_GRACE_MS = 10_000;

const commonOptions = {
  name: { type: 'string' },
  socket: { type: 'string' },
  'metrics-port': { type: 'string' },
  'metrics-address': { type: 'string' },
  'grace-ms': { type: 'string' },
  'connect-timeout-ms': { type: 'string' },
  'max-connections': { type: 'string' },
} as const;

export const CONNECTOR_COMMANDS: ConnectorCommand[] = [
  {
    name: 'serve',
    usage:
      'keyhole connector serve --name NAME --socket PATH --routes FILE [--metrics-port N] [--metrics-address ADDR] [--grace-ms MS] [--connect-timeout-ms MS] [--header-timeout-ms MS] [--max-connections N]',
    summary: 'listen on a UNIX socket and dial, for the console proxies, the destinations that FILE (via: direct routes) allows',
    async run(context) {
      const { values } = flags(context.args, { ...commonOptions, routes: { type: 'string' }, 'header-timeout-ms': { type: 'string' } });
      const routesFile = required(values.routes, '--routes');
      const headerTimeoutMs = milliseconds(values['header-timeout-ms'], '--header-timeout-ms', 5_000);
      const { name, socket, logger, metrics, status, ...common } = setUp(context, values, 'serve');
      const connector = new ServeConnector({
        name,
        socketPath: socket,
        routesFile,
        logger,
        metrics,
        headerTimeoutMs,
        connectTimeoutMs: common.connectTimeoutMs,
        maxConnections: common.maxConnections,
        onConnections: (counts) => status.update(counts),
      });
      return runUntilSignalled({ connector, status, metrics, logger, ...common, onHangup: () => void connector.reloadRoutes() });
    },
  },
  {
    name: 'expose',
    usage:
      'keyhole connector expose --name NAME --tproxy FILE --socket PATH [--address 169.254.16.9] [--network NET] [--metrics-port N] [--metrics-address ADDR] [--grace-ms MS] [--connect-timeout-ms MS] [--max-connections N]',
    summary:
      "listen on ADDRESS:service_port for each entry of an OpenNebula tproxy FILE and carry each connection to a serving connector's socket",
    async run(context) {
      const { values } = flags(context.args, {
        ...commonOptions,
        tproxy: { type: 'string' },
        address: { type: 'string' },
        network: { type: 'string' },
      });
      const file = required(values.tproxy, '--tproxy');
      const address = values.address ?? DEFAULT_EXPOSE_ADDRESS;
      const { name, socket, logger, metrics, status, ...common } = setUp(context, values, 'expose');
      const { entries, ignored } = selectTproxyEntries(await loadTproxyFile(file), values.network);
      for (const { entry, index, shadowedBy } of ignored) {
        logger.warn(
          { file, entry: index, servicePort: entry.servicePort, firstEntry: shadowedBy },
          'tproxy entry ignored: its service_port is taken by an earlier entry',
        );
      }
      if (entries.length === 0) {
        throw new ConnectorUsageError(
          `${file}: no entry applies${values.network === undefined ? ' (entries with :networks need --network)' : ` to network ${values.network}`}`,
        );
      }
      const connector = new ExposeConnector({
        name,
        entries,
        address,
        socketPath: socket,
        logger,
        metrics,
        connectTimeoutMs: common.connectTimeoutMs,
        maxConnections: common.maxConnections,
        onConnections: (counts) => status.update(counts),
      });
      status.setListening(connector.listening);
      return runUntilSignalled({ connector, status, metrics, logger, ...common });
    },
  },
  {
    name: 'status',
    usage: 'keyhole connector status [--json] [--prune]',
    summary: 'list the connectors running on this machine: name, mode, network namespace, PID, socket or addresses, connections',
    async run(context) {
      const { values } = flags(context.args, { json: { type: 'boolean' }, prune: { type: 'boolean' } });
      const rows = await listConnectors(context.runDir, values.prune ?? false);
      if (values.json) {
        context.out(JSON.stringify(rows, null, 2));
        return 0;
      }
      if (rows.length === 0) {
        context.out(`(no connector has a status file in ${context.runDir})`);
        return 0;
      }
      const table = rows.map((row) => ({
        NAME: row.name,
        MODE: row.mode,
        NETNS: row.netns || (row.netnsInode ?? '-'),
        PID: String(row.pid),
        SOCKET: row.socket,
        LISTENING: row.listening || '-',
        LIVE: String(row.live),
        TOTAL: String(row.total),
        STATE: row.state,
      }));
      const columns = Object.keys(table[0]) as (keyof (typeof table)[number])[];
      const widths = columns.map((column) => Math.max(column.length, ...table.map((row) => row[column].length)));
      const line = (values: string[]) =>
        values
          .map((value, index) => value.padEnd(widths[index]))
          .join('  ')
          .trimEnd();
      context.out(line(columns));
      for (const row of table) {
        context.out(line(columns.map((column) => row[column])));
      }
      return 0;
    },
  },
];

interface Runnable {
  start(): Promise<void>;
  stop(graceMs: number): Promise<void>;
}

/**
 * Starts the connector, its status file and its metrics, and runs until SIGTERM or SIGINT: then it
 * stops accepting, lets live connections finish for the grace period, and cleans up. SIGHUP calls
 * `onHangup` (serve: reload the routes file).
 */
async function runUntilSignalled(options: {
  connector: Runnable;
  status: StatusFile;
  metrics: ConnectorMetrics;
  logger: Logger;
  metricsPort: number | undefined;
  metricsAddress: string;
  graceMs: number;
  onHangup?: () => void;
}): Promise<number> {
  const { connector, status, metrics, logger } = options;
  await connector.start();
  let metricsServer: Server | undefined;
  try {
    await status.start();
    if (options.metricsPort !== undefined) {
      metricsServer = await metrics.serve(options.metricsPort, options.metricsAddress);
      const address = metricsServer.address();
      logger.info(
        { metrics: typeof address === 'object' && address ? `${address.address}:${address.port}` : address },
        'metrics listening',
      );
    }
  } catch (error) {
    await connector.stop(0);
    await status.remove();
    throw error;
  }
  const hangup = () => options.onHangup?.();
  process.on('SIGHUP', hangup);
  let onSignal: (signal: NodeJS.Signals) => void = () => undefined;
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    onSignal = resolve;
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  logger.info({ signal }, 'connector shutting down');
  process.off('SIGHUP', hangup);
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
  await connector.stop(options.graceMs);
  await status.remove();
  await new Promise<void>((resolve) => (metricsServer ? metricsServer.close(() => resolve()) : resolve()));
  return 0;
}

function flags<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false });
  } catch (error) {
    throw new ConnectorUsageError(error instanceof Error ? error.message : String(error));
  }
}

/** What `serve` and `expose` share: name, socket, logger, metrics, status file, and the common flags. */
function setUp(
  context: ConnectorCommandContext,
  values: {
    name?: string;
    socket?: string;
    'metrics-port'?: string;
    'metrics-address'?: string;
    'grace-ms'?: string;
    'connect-timeout-ms'?: string;
    'max-connections'?: string;
  },
  mode: 'serve' | 'expose',
) {
  const name = required(values.name, '--name', NAME, 'lowercase letters, digits and inner dashes');
  const socket = absolutePath(values.socket, '--socket');
  return {
    name,
    socket,
    logger: context.logger ?? createLogger({ level: context.logLevel, name: `keyhole-connector-${name}` }),
    metrics: new ConnectorMetrics(name, mode),
    status: new StatusFile(context.runDir, {
      name,
      mode,
      pid: process.pid,
      socket,
      listening: [],
      startedAt: new Date().toISOString(),
      connections: { live: 0, total: 0 },
    }),
    metricsPort: values['metrics-port'] === undefined ? undefined : integer(values['metrics-port'], '--metrics-port', 0, 65_535),
    metricsAddress: values['metrics-address'] ?? '127.0.0.1',
    graceMs: milliseconds(values['grace-ms'], '--grace-ms', DEFAULT_GRACE_MS),
    connectTimeoutMs: milliseconds(values['connect-timeout-ms'], '--connect-timeout-ms', 5_000),
    maxConnections: values['max-connections'] === undefined ? 4096 : integer(values['max-connections'], '--max-connections', 1, 1_000_000),
  };
}

function required(value: string | undefined, flag: string, pattern?: RegExp, rule?: string): string {
  if (value === undefined || value === '') {
    throw new ConnectorUsageError(`${flag} is required`);
  }
  if (pattern && !pattern.test(value)) {
    throw new ConnectorUsageError(`${flag}: ${rule ?? 'invalid'}`);
  }
  return value;
}

function absolutePath(value: string | undefined, flag: string): string {
  const path = required(value, flag);
  // sun_path holds 108 bytes with its terminating NUL.
  if (!isAbsolute(path) || Buffer.byteLength(path) > 107) {
    throw new ConnectorUsageError(`${flag}: must be an absolute path of at most 107 bytes`);
  }
  return path;
}

function milliseconds(value: string | undefined, flag: string, fallback: number): number {
  return value === undefined ? fallback : integer(value, flag, 0, 3_600_000);
}

function integer(value: string, flag: string, min: number, max: number): number {
  const number = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!(number >= min && number <= max)) {
    throw new ConnectorUsageError(`${flag}: must be an integer from ${min} to ${max}`);
  }
  return number;
}
