import { ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

const MAIN = path.resolve(__dirname, '../../dist/apps/console-proxy/src/main.js');

export interface ProxyProcess {
  child: ChildProcess;
  port: number;
  wsBase: string;
  /** Every line the process wrote (JSON logs). */
  output: () => string;
  /** Resolves with the exit code (or signal) once the process has exited. */
  exited: Promise<number | string | null>;
  /** Sends a signal (SIGTERM by default) and waits for the exit, killing it after `timeoutMs`. */
  stop: (signal?: NodeJS.Signals, timeoutMs?: number) => Promise<number | string | null>;
}

/**
 * Runs the compiled console proxy (`npm run build` first; `npm test` does it) as its own process,
 * as production does, on a free port, and waits until it listens.
 */
export async function startProxyProcess(environment: Record<string, string>, timeoutMs = 20_000): Promise<ProxyProcess> {
  if (!existsSync(MAIN)) {
    throw new Error(`${MAIN} is missing: run "npm run build" first`);
  }
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, KEYHOLE_PROXY_PORT: '0', KEYHOLE_LOG_LEVEL: 'info', ...environment };
  const child = spawn(process.execPath, [MAIN], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  const exited = new Promise<number | string | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`proxy did not listen within ${timeoutMs} ms:\n${output}`)), timeoutMs);
    const check = () => {
      const match = /"port":(\d+),"msg":"console proxy listening"/.exec(output);
      if (match) {
        clearTimeout(timer);
        child.stdout?.off('data', check);
        resolve(Number(match[1]));
      }
    };
    child.stdout?.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`proxy exited (${String(code)}) before listening:\n${output}`));
    });
  });
  return {
    child,
    port,
    wsBase: `ws://127.0.0.1:${port}`,
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
