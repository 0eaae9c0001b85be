import { LoggerService } from '@nestjs/common';
import { NestExpressApplication } from '@nestjs/platform-express';
import { NestFastifyApplication } from '@nestjs/platform-fastify';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { CellsService } from '@keyhole/cells';
import { KeyholeConfig, loadConfig } from '@keyhole/config';
import { CredentialsService } from '@keyhole/credentials';
import { createConsoleProxyApp } from '@keyhole/console-proxy';
import { ControlDatabase, createDatabaseIfMissing, migrateDatabase } from '@keyhole/db';
import { createLogger, PinoNestLogger } from '@keyhole/observability';
import { createTokenApi } from '@keyhole/token-api';
import { openServices } from '../services';
import { EmbeddedPostgresHandle, findFreePort, startEmbeddedPostgres } from './embedded-postgres';
import { localRoutesFile } from './local-routes';

/** The cells of a local deployment and the default ports of their console proxies. */
export const LOCAL_CELLS = [
  { name: 'cell1', proxyPort: 6081 },
  { name: 'cell2', proxyPort: 6082 },
] as const;

export interface LocalDeploymentOptions {
  /** Where the embedded cluster, its password and the logs live. */
  dataDir: string;
  /** A PostgreSQL server to use instead of the embedded one (its control database URL). */
  databaseUrl?: string;
  /** Token API port; 0 picks a free one. */
  apiPort: number;
  /** Console proxy ports, one per local cell in LOCAL_CELLS order; 0 picks a free one. Default 6081, 6082. */
  proxyPorts?: number[];
  /** A routes file to use (KEYHOLE_ROUTES_FILE) instead of the one written into the data directory. */
  routesFile?: string;
  /** Settings for the processes, as from the environment (KEYHOLE_*). */
  environment: NodeJS.ProcessEnv;
  onProgress: (line: string) => void;
}

export interface LocalDeployment {
  apiUrl: string;
  openApiUrl: string;
  controlDatabase: string;
  cells: { name: string; proxyUrl: string; novncPage: string; serialPage: string }[];
  operatorKey: string;
  agentKeys: Record<string, string>;
  logFile: string;
  /** File holding the control database URL (mode 0600), for the CLI: KEYHOLE_DATABASE_URL. */
  controlUrlFile: string;
  /** The routes file the API and the proxies use (written at start unless KEYHOLE_ROUTES_FILE names one). */
  routesFile: string;
  stop: () => Promise<void>;
}

/**
 * A whole keyhole deployment on one machine: PostgreSQL (embedded unless a URL is given), the
 * control database and two cells, migrated; fresh operator and agent keys (the previous local
 * keys are revoked); the token API on 127.0.0.1. The API and the proxies allow only loopback
 * console ports, never the deployment's own (routes file in the data directory).
 */
/**
 * The one-machine deployment serves plain HTTP on 127.0.0.1 whatever the environment says about
 * TLS: its URLs are http:// and ws:// (README's TLS is for the processes run one by one).
 */
const PLAIN_LOOPBACK = {
  KEYHOLE_API_TLS_CERT_FILE: undefined,
  KEYHOLE_API_TLS_KEY_FILE: undefined,
  KEYHOLE_API_TLS_CLIENT_CA_FILE: undefined,
  KEYHOLE_API_TLS_ONLY: undefined,
  KEYHOLE_PROXY_TLS_CERT_FILE: undefined,
  KEYHOLE_PROXY_TLS_KEY_FILE: undefined,
  KEYHOLE_PROXY_TLS_ONLY: undefined,
};

export async function startLocalDeployment(options: LocalDeploymentOptions): Promise<LocalDeployment> {
  await mkdir(options.dataDir, { recursive: true });
  let postgres: EmbeddedPostgresHandle | undefined;
  let api: NestFastifyApplication | undefined;
  const proxies: NestExpressApplication[] = [];
  const stop = async () => {
    await api?.close();
    api = undefined;
    // Proxies drain nothing here: a local stop ends the consoles at once.
    await Promise.all(proxies.splice(0).map((proxy) => proxy.close()));
    await postgres?.stop();
    postgres = undefined;
  };
  try {
    let controlUrl: string;
    let cellUrl: (cell: string) => string;
    if (options.databaseUrl) {
      controlUrl = options.databaseUrl;
      const base = new URL(controlUrl);
      const controlName = base.pathname.replace(/^\//, '') || 'keyhole';
      cellUrl = (cell) => Object.assign(new URL(controlUrl), { pathname: `/${controlName}_${cell}` }).toString();
    } else {
      postgres = await startEmbeddedPostgres({ dataDir: path.join(options.dataDir, 'pgdata'), onProgress: options.onProgress });
      controlUrl = postgres.urlFor('keyhole_control');
      cellUrl = (cell) => (postgres as EmbeddedPostgresHandle).urlFor(`keyhole_${cell}`);
    }
    await createDatabaseIfMissing(controlUrl);
    // The embedded server's port and password change nothing for the API, but the CLI needs them.
    const controlUrlFile = path.join(options.dataDir, 'control-url');
    await writeFile(controlUrlFile, `${controlUrl}\n`, { mode: 0o600 });
    await chmod(controlUrlFile, 0o600);

    // Ports are fixed before anything listens, so that the routes file can leave out every one of
    // them (a port 0 becomes the kernel's pick of a free port now).
    const apiPort = options.apiPort || (await findFreePort());
    const proxyPorts: number[] = [];
    for (const [index, cell] of LOCAL_CELLS.entries()) {
      proxyPorts.push((options.proxyPorts?.[index] ?? cell.proxyPort) || (await findFreePort()));
    }
    const databasePort = Number(new URL(controlUrl).port || 5432);
    let routesFile = options.routesFile;
    if (routesFile === undefined) {
      routesFile = path.join(options.dataDir, 'routes.yaml');
      await writeFile(routesFile, localRoutesFile([apiPort, ...proxyPorts, databasePort]));
    }
    const environment = { ...options.environment, ...PLAIN_LOOPBACK, KEYHOLE_ROUTES_FILE: routesFile };
    const config = loadConfig({
      ...environment,
      KEYHOLE_DATABASE_URL: controlUrl,
      KEYHOLE_API_HOST: '127.0.0.1',
      KEYHOLE_API_PORT: String(apiPort),
    });
    const logFile = path.join(options.dataDir, 'keyhole.log');
    const logger = new PinoNestLogger(
      createLogger({ level: config.log.level, name: 'keyhole-local', destination: createWriteStream(logFile, { flags: 'a' }) }),
    );
    const keys = await prepareDatabases(config, cellUrl, options.onProgress, logger);

    // One console proxy per cell, each knowing only its own cell database, as in production.
    const cells: LocalDeployment['cells'] = [];
    for (const [index, cell] of LOCAL_CELLS.entries()) {
      const proxyConfig = loadConfig({
        ...environment,
        KEYHOLE_DATABASE_URL: undefined,
        KEYHOLE_CELL_NAME: cell.name,
        KEYHOLE_CELL_DATABASE_URL: cellUrl(cell.name),
        KEYHOLE_PROXY_HOST: '127.0.0.1',
        KEYHOLE_PROXY_PORT: String(proxyPorts[index]),
      });
      const proxy = await createConsoleProxyApp(proxyConfig, logger, { handleSignals: false });
      proxies.push(proxy);
      await proxy.listen(proxyConfig.proxy.port, proxyConfig.proxy.host);
      const { port } = proxy.getHttpServer().address() as { port: number };
      const proxyUrl = localProxyUrl(port);
      cells.push({ name: cell.name, proxyUrl, novncPage: `${proxyUrl}/vnc_lite.html`, serialPage: `${proxyUrl}/serial.html` });
    }
    await pointCellsAtProxies(config, cells, logger);

    api = await createTokenApi(config, logger, { handleSignals: false });
    await api.listen(config.api.port, config.api.host);
    const { port } = api.getHttpServer().address() as { port: number };
    const apiUrl = `http://127.0.0.1:${port}`;
    return {
      apiUrl,
      openApiUrl: `${apiUrl}/v1/openapi.json`,
      controlDatabase: postgres ? 'embedded PostgreSQL' : 'KEYHOLE_DATABASE_URL',
      cells,
      ...keys,
      logFile,
      controlUrlFile,
      routesFile,
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

function localProxyUrl(port: number): string {
  return `http://127.0.0.1:${port}`;
}

/** Records where each cell's proxy listens, so the access URLs the API issues point at it. */
async function pointCellsAtProxies(
  config: KeyholeConfig,
  cells: { name: string; proxyUrl: string }[],
  logger: LoggerService,
): Promise<void> {
  const services = await openServices(config, logger);
  try {
    for (const cell of cells) {
      await services.get(CellsService).updateProxyUrl(cell.name, cell.proxyUrl);
    }
  } finally {
    await services.close();
  }
}

/** Migrates the control database, registers the local cells once, and issues fresh local keys. */
async function prepareDatabases(
  config: KeyholeConfig,
  cellUrl: (cell: string) => string,
  onProgress: (line: string) => void,
  logger: LoggerService,
): Promise<{ operatorKey: string; agentKeys: Record<string, string> }> {
  const services = await openServices(config, logger);
  try {
    await migrateDatabase(services.get(ControlDatabase).dataSource);
    const cells = services.get(CellsService);
    const registered = new Set((await cells.list()).map((cell) => cell.name));
    for (const cell of LOCAL_CELLS) {
      const url = cellUrl(cell.name);
      await createDatabaseIfMissing(url);
      if (registered.has(cell.name)) {
        // The embedded server may listen on another port than last time.
        await cells.updateDatabaseUrl(cell.name, url);
      } else {
        await cells.register({ name: cell.name, databaseUrl: url, proxyUrl: localProxyUrl(cell.proxyPort) });
        onProgress(`registered ${cell.name}`);
      }
    }

    const credentials = services.get(CredentialsService);
    for (const old of await credentials.list({ includeRevoked: false })) {
      if (old.name.startsWith('local-')) {
        await credentials.revoke(old.id);
      }
    }
    const operatorKey = (await credentials.create({ name: 'local-operator', role: 'operator', cellName: null })).key;
    const agentKeys: Record<string, string> = {};
    for (const cell of LOCAL_CELLS) {
      agentKeys[cell.name] = (await credentials.create({ name: `local-agent-${cell.name}`, role: 'agent', cellName: cell.name })).key;
    }
    return { operatorKey, agentKeys };
  } finally {
    await services.close();
  }
}
