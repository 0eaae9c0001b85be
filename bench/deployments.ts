import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { Client } from 'pg';
import { freePort } from '../test/support/real/network';
import { ManagedProcess, startProcess, waitForOutput } from '../test/support/real/processes';
import { startWebsockify as startHarnessWebsockify, Websockify } from '../test/support/real/websockify';
import { onCleanup } from './procs';

/**
 * The systems under test, started the way production starts them: keyhole from its compiled
 * `dist/` (CLI for migrations, the cell and the keys; the token API and ONE console proxy as
 * processes of their own, on real PostgreSQL), and Debian's websockify with its TokenFile plugin.
 */

const execFileAsync = promisify(execFile);

export interface KeyholeOptions {
  /** The checkout whose dist/ runs (default: this one). */
  productDir: string;
  /** PostgreSQL server (a role that may create databases). */
  serverUrl: string;
  /** Log files go here. */
  workDir: string;
  apiPoolSize: number;
  proxyPoolSize: number;
  /** Extra node arguments for the proxy and the API (--cpu-prof ..., which NODE_OPTIONS refuses). */
  proxyNodeArgs?: string[];
  apiNodeArgs?: string[];
  proxyEnvironment?: Record<string, string>;
  apiEnvironment?: Record<string, string>;
}

export interface Keyhole {
  cellName: string;
  controlUrl: string;
  cellUrl: string;
  apiUrl: string;
  proxyPort: number;
  agentKey: string;
  operatorKey: string;
  api: ManagedProcess;
  proxy: ManagedProcess;
  /** The measured build's CLI (`dist/apps/cli/src/main.js`), for long-running commands. */
  cliMain: string;
  /** `node dist/apps/cli/src/main.js ARGS` of the measured build, with `environment` added; its stdout. */
  cli(args: string[], environment?: Record<string, string>): Promise<string>;
  /**
   * Starts one more console proxy of the cell on a port of its own (same settings, `environment`
   * added, e.g. a routes file of its own), stopped at cleanup.
   */
  startExtraProxy(name: string, environment: Record<string, string>): Promise<{ port: number; process: ManagedProcess }>;
  /**
   * Restarts the proxy (same port, same database), e.g. to measure a fresh process's memory;
   * `environment` overrides settings of this start only (KEYHOLE_PROXY_WORKERS=1).
   */
  restartProxy(environment?: Record<string, string>): Promise<void>;
  /** Stops the API and the proxy (SIGTERM: Nest shuts down, profiles are written). */
  stopProcesses(): Promise<void>;
}

function urlForDatabase(serverUrl: string, name: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

async function onServer<T>(serverUrl: string, work: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: serverUrl, connectionTimeoutMillis: 10_000 });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

export async function startKeyhole(options: KeyholeOptions): Promise<Keyhole> {
  const dist = path.join(options.productDir, 'dist/apps');
  const cliMain = path.join(dist, 'cli/src/main.js');
  const apiMain = path.join(dist, 'token-api/src/main.js');
  const proxyMain = path.join(dist, 'console-proxy/src/main.js');
  for (const file of [cliMain, apiMain, proxyMain]) {
    if (!existsSync(file)) {
      throw new Error(`${file} is missing: run "npm run build" in ${options.productDir}`);
    }
  }

  const suffix = randomBytes(4).toString('hex');
  const controlName = `keyhole_bench_control_${suffix}`;
  const cellDbName = `keyhole_bench_cell_${suffix}`;
  const controlUrl = urlForDatabase(options.serverUrl, controlName);
  const cellUrl = urlForDatabase(options.serverUrl, cellDbName);
  const cellName = 'bench';

  // Dropped at the end whatever happens (FORCE: a process that did not stop cannot keep them).
  onCleanup(() =>
    onServer(options.serverUrl, async (client) => {
      for (const name of [cellDbName, controlName]) {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      }
    }),
  );
  await onServer(options.serverUrl, async (client) => {
    for (const name of [controlName, cellDbName]) {
      await client.query(`CREATE DATABASE ${name}`);
    }
  });

  const baseEnvironment: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, KEYHOLE_LOG_LEVEL: 'info' };
  // The load generator is thousands of users behind one address (127.0.0.1), opening up to 50
  // sessions at once: lift the proxy's cap on pending connections per address, in builds that have
  // it (an older build refuses a setting it does not know).
  const pendingCaps = productKnowsSetting(options.productDir, 'KEYHOLE_PROXY_MAX_PENDING_PER_ADDRESS')
    ? { KEYHOLE_PROXY_MAX_PENDING_PER_ADDRESS: '65536', KEYHOLE_PROXY_MAX_PENDING: '1048576' }
    : {};
  const cliWith = async (args: string[], environment: Record<string, string> = {}): Promise<string> => {
    const { stdout } = await execFileAsync(process.execPath, [cliMain, ...args], {
      env: { ...baseEnvironment, KEYHOLE_DATABASE_URL: controlUrl, ...environment },
      timeout: 60_000,
    });
    return stdout;
  };
  const cli = (...args: string[]): Promise<string> => cliWith(args);
  const proxyPort = await freePort();
  await cli('migrate');
  await cli('cells', 'add', cellName, '--database-url', cellUrl, '--proxy-url', `http://127.0.0.1:${proxyPort}`);
  const keyOf = (output: string): string => {
    const key = /khk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}/.exec(output)?.[0];
    if (!key) {
      throw new Error(`no API key in the CLI's answer:\n${output}`);
    }
    return key;
  };
  const agentKey = keyOf(await cli('credentials', 'create', '--role', 'agent', '--cell', cellName, '--name', 'bench-agent'));
  const operatorKey = keyOf(await cli('credentials', 'create', '--role', 'operator', '--cell', cellName, '--name', 'bench-operator'));

  mkdirSync(options.workDir, { recursive: true });
  const api = await startProcess(process.execPath, [...(options.apiNodeArgs ?? []), apiMain], {
    name: 'token API',
    logFile: path.join(options.workDir, 'token-api.log'),
    env: {
      ...baseEnvironment,
      KEYHOLE_DATABASE_URL: controlUrl,
      KEYHOLE_API_HOST: '127.0.0.1',
      KEYHOLE_API_PORT: '0',
      // The bench purges on demand; the schedule would purge in the middle of other figures.
      KEYHOLE_PURGE_INTERVAL_MS: '0',
      KEYHOLE_DB_POOL_SIZE: String(options.apiPoolSize),
      ...options.apiEnvironment,
    },
  });
  onCleanup(() => api.stop());
  const apiPort = Number((await waitForOutput(api, /"port":(\d+),"msg":"token API listening"/, 30_000))[1]);

  let proxyRun = 0;
  const startProxy = async (
    environment: Record<string, string> = {},
    port = proxyPort,
    name = 'console proxy',
  ): Promise<ManagedProcess> => {
    proxyRun += 1;
    const proxy = await startProcess(process.execPath, [...(options.proxyNodeArgs ?? []), proxyMain], {
      name,
      logFile: path.join(options.workDir, `${name.replace(/\W+/g, '-')}-${proxyRun}.log`),
      env: {
        ...baseEnvironment,
        KEYHOLE_CELL_NAME: cellName,
        KEYHOLE_CELL_DATABASE_URL: cellUrl,
        KEYHOLE_PROXY_HOST: '127.0.0.1',
        KEYHOLE_PROXY_PORT: String(port),
        KEYHOLE_DB_POOL_SIZE: String(options.proxyPoolSize),
        ...pendingCaps,
        ...options.proxyEnvironment,
        ...environment,
      },
    });
    onCleanup(() => proxy.stop());
    await waitForOutput(proxy, /"msg":"console proxy listening"/, 30_000);
    return proxy;
  };
  const keyhole: Keyhole = {
    cellName,
    controlUrl,
    cellUrl,
    apiUrl: `http://127.0.0.1:${apiPort}`,
    proxyPort,
    agentKey,
    operatorKey,
    api,
    proxy: await startProxy(),
    cliMain,
    cli: cliWith,
    async startExtraProxy(name, environment) {
      const port = await freePort();
      return { port, process: await startProxy(environment, port, name) };
    },
    async restartProxy(environment) {
      // SIGTERM drains for KEYHOLE_PROXY_DRAIN_GRACE_MS; the bench closed its sessions already.
      await keyhole.proxy.stop(20_000);
      keyhole.proxy = await startProxy(environment);
    },
    async stopProcesses() {
      await Promise.all([keyhole.proxy.stop(20_000), api.stop(20_000)]);
    },
  };
  return keyhole;
}

/** Issues one token through the API as the cell's agent; returns the token. */
export async function issueToken(keyhole: Keyhole, target: { host: string; port: number }, ttlSeconds = 3600): Promise<string> {
  const response = await fetch(`${keyhole.apiUrl}/v1/cells/${keyhole.cellName}/tokens`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${keyhole.agentKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({
      instanceUuid: '00000000-0000-4000-8000-00000000be01',
      consoleType: 'novnc',
      host: target.host,
      port: target.port,
      ttlSeconds,
    }),
    signal: AbortSignal.timeout(10_000),
  });
  const body = (await response.json()) as { token?: string };
  if (response.status !== 201 || !body.token) {
    throw new Error(`issuing a token failed: ${response.status} ${JSON.stringify(body)}`);
  }
  return body.token;
}

export type { Websockify };

/**
 * Debian's websockify with its TokenFile plugin (the harness's launcher), its output in the run's
 * work directory.
 */
export async function startWebsockify(targets: Record<string, string>, workDir: string): Promise<Websockify> {
  const websockify = await startHarnessWebsockify(targets, { logFile: path.join(workDir, 'websockify.log') });
  onCleanup(() => websockify.stop());
  return websockify;
}

/** Whether the build in `productDir` has the setting `name` (its compiled configuration schema names it). */
function productKnowsSetting(productDir: string, name: string): boolean {
  const schema = path.join(productDir, 'dist/libs/config/src/config.schema.js');
  return existsSync(schema) && readFileSync(schema, 'utf8').includes(name);
}
