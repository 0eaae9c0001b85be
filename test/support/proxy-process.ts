import { ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

const PROXY_MAIN = path.resolve(__dirname, '../../dist/apps/console-proxy/src/main.js');
const API_MAIN = path.resolve(__dirname, '../../dist/apps/token-api/src/main.js');

/** A compiled keyhole server (`npm run build` first) running as its own process. */
export interface KeyholeProcess {
  child: ChildProcess;
  port: number;
  /** Every line the process wrote (JSON logs). */
  output: () => string;
  /** Resolves with the exit code (or signal) once the process has exited. */
  exited: Promise<number | string | null>;
  /** Sends a signal (SIGTERM by default) and waits for the exit, killing it after `timeoutMs`. */
  stop: (signal?: NodeJS.Signals, timeoutMs?: number) => Promise<number | string | null>;
}

export interface ProxyProcess extends KeyholeProcess {
  wsBase: string;
}

export interface TokenApiProcess extends KeyholeProcess {
  /** `http://127.0.0.1:PORT` (the API may serve https on it: README's TLS). */
  baseUrl: string;
}

/**
 * Runs the compiled console proxy (`npm run build` first; `npm test` does it) as its own process,
 * as production does, on a free port, and waits until it listens.
 */
export async function startProxyProcess(environment: Record<string, string>, timeoutMs = 20_000): Promise<ProxyProcess> {
  const started = await startKeyholeProcess(PROXY_MAIN, 'console proxy listening', { KEYHOLE_PROXY_PORT: '0', ...environment }, timeoutMs);
  return { ...started, wsBase: `ws://127.0.0.1:${started.port}` };
}

/** Runs the compiled token API as its own process on a free port, and waits until it listens. */
export async function startTokenApiProcess(environment: Record<string, string>, timeoutMs = 20_000): Promise<TokenApiProcess> {
  const started = await startKeyholeProcess(API_MAIN, 'token API listening', { KEYHOLE_API_PORT: '0', ...environment }, timeoutMs);
  return { ...started, baseUrl: `http://127.0.0.1:${started.port}` };
}

/**
 * Starts `main` with only PATH and `environment`, and waits for its JSON line `readyMessage`,
 * whose last field before the message is the port it listens on. Rejects with the output if it
 * exits first or does not get there within `timeoutMs`.
 */
async function startKeyholeProcess(
  main: string,
  readyMessage: string,
  environment: Record<string, string>,
  timeoutMs: number,
): Promise<KeyholeProcess> {
  if (!existsSync(main)) {
    throw new Error(`${main} is missing: run "npm run build" first`);
  }
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, KEYHOLE_LOG_LEVEL: 'info', ...environment };
  const child = spawn(process.execPath, [main], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  const exited = new Promise<number | string | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  const ready = new RegExp(`"port":(\\d+),"msg":"${readyMessage}"`);
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${path.basename(path.dirname(path.dirname(main)))} did not listen within ${timeoutMs} ms:\n${output}`)),
      timeoutMs,
    );
    const check = () => {
      const match = ready.exec(output);
      if (match) {
        clearTimeout(timer);
        child.stdout?.off('data', check);
        resolve(Number(match[1]));
      }
    };
    child.stdout?.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`${path.basename(path.dirname(path.dirname(main)))} exited (${String(code)}) before listening:\n${output}`));
    });
  });
  return {
    child,
    port,
    output: () => output,
    exited,
    stop: async (signal = 'SIGTERM', stopTimeoutMs = 15_000) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        return exited;
      }
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), stopTimeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}
