import { existsSync } from 'node:fs';
import path from 'node:path';
import { freePort } from './real/network';
import { failOnExit, ManagedProcess, startProcess } from './real/processes';
import { waitUntil } from './wait';

const MAIN = path.resolve(__dirname, '../../dist/apps/token-api/src/main.js');

export interface TokenApiProcess {
  process: ManagedProcess;
  port: number;
  /** http://127.0.0.1:PORT */
  baseUrl: string;
  /** SIGTERM (Nest shuts down), SIGKILL after the grace period; resolves once it has exited. */
  close: () => Promise<void>;
}

/**
 * Runs the compiled token API (`npm run build` first) as a process of its own, as production does,
 * on 127.0.0.1 (a free port, or `port`) with tiny argon2 parameters and no purge schedule, and
 * waits until `/healthz` answers (whatever the log level). `environment` adds to or overrides those
 * settings (KEYHOLE_DATABASE_URL is required).
 */
export async function startTokenApiProcess(
  environment: Record<string, string>,
  options: { port?: number; timeoutMs?: number } = {},
): Promise<TokenApiProcess> {
  if (!existsSync(MAIN)) {
    throw new Error(`${MAIN} is missing: run "npm run build" first`);
  }
  const port = options.port ?? (await freePort());
  const api = await startProcess(process.execPath, [MAIN], {
    name: 'token API',
    env: {
      PATH: process.env.PATH,
      KEYHOLE_API_HOST: '127.0.0.1',
      KEYHOLE_API_PORT: String(port),
      KEYHOLE_PURGE_INTERVAL_MS: '0',
      KEYHOLE_DB_POOL_SIZE: '4',
      KEYHOLE_ARGON2_MEMORY_KIB: '64',
      KEYHOLE_ARGON2_TIME_COST: '1',
      KEYHOLE_ARGON2_PARALLELISM: '1',
      KEYHOLE_LOG_LEVEL: 'info',
      ...environment,
    },
  });
  const baseUrl = `http://127.0.0.1:${port}`;
  try {
    await Promise.race([
      waitUntil(
        async () => ((await fetch(`${baseUrl}/healthz`)).ok ? true : undefined),
        options.timeoutMs ?? 30_000,
        'the token API to answer /healthz',
        {
          intervalMs: 50,
          retryErrors: true,
        },
      ),
      failOnExit(api, 'the token API', 'before answering /healthz'),
    ]);
  } catch (error) {
    await api.stop(0, 'SIGKILL');
    throw error;
  }
  return { process: api, port, baseUrl, close: () => api.stop(10_000) };
}
