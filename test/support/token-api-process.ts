import { existsSync } from 'node:fs';
import path from 'node:path';
import { ManagedProcess, startProcess, waitForOutput } from './real/processes';

const MAIN = path.resolve(__dirname, '../../dist/apps/token-api/src/main.js');

/**
 * Settings for an API process whose hashing and schedule are not under test: tiny argon2
 * parameters for the credentials it creates, no purge schedule. Spread before a test's own.
 */
export const QUIET_API_ENVIRONMENT: Readonly<Record<string, string>> = {
  KEYHOLE_ARGON2_MEMORY_KIB: '64',
  KEYHOLE_ARGON2_TIME_COST: '1',
  KEYHOLE_ARGON2_PARALLELISM: '1',
  KEYHOLE_PURGE_INTERVAL_MS: '0',
};

export interface TokenApiProcess {
  process: ManagedProcess;
  baseUrl: string;
  /** Sends SIGTERM (SIGKILL after a grace period) and waits for the exit. */
  close: () => Promise<void>;
}

/**
 * Runs the compiled token API (`npm run build` first; `npm test` does it) as its own process, as
 * production does, on a free port of 127.0.0.1, and waits until it listens. `environment` is its
 * whole keyhole configuration (KEYHOLE_DATABASE_URL at least).
 */
export async function startTokenApiProcess(environment: Record<string, string>, timeoutMs = 20_000): Promise<TokenApiProcess> {
  if (!existsSync(MAIN)) {
    throw new Error(`${MAIN} is missing: run "npm run build" first`);
  }
  const managed = await startProcess(process.execPath, [MAIN], {
    name: 'keyhole-api',
    env: { PATH: process.env.PATH, KEYHOLE_API_HOST: '127.0.0.1', KEYHOLE_API_PORT: '0', KEYHOLE_LOG_LEVEL: 'info', ...environment },
  });
  try {
    const listening = await waitForOutput(managed, /"port":(\d+),"msg":"token API listening"/, timeoutMs);
    return { process: managed, baseUrl: `http://127.0.0.1:${listening[1]}`, close: () => managed.stop(10_000) };
  } catch (error) {
    await managed.stop(0, 'SIGKILL');
    throw error;
  }
}
