import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { waitUntil } from '../wait';
import { closeSocket, connectTcp, freePort } from './network';
import { failOnExit, findOnPath, ManagedProcess, startProcess } from './processes';

/** A running Debian websockify (the Python reference proxy), resolving tokens with its TokenFile plugin. */
export interface Websockify {
  /** Listening port on 127.0.0.1: websocket at `ws://127.0.0.1:PORT/?token=TOKEN`, files at `http://...` with `web`. */
  readonly port: number;
  /** Its process group: websockify and its per-connection processes. */
  readonly pid: number;
  readonly commandLine: string;
  output(): string;
  /** Stops websockify and its per-connection processes; removes the token directory. Idempotent. */
  stop(): Promise<void>;
}

export function isWebsockifyAvailable(): boolean {
  return findOnPath('websockify') !== undefined;
}

/**
 * Starts `websockify --token-plugin TokenFile --token-source DIR [--web WEB] 127.0.0.1:PORT` where DIR
 * holds one file of `TOKEN: HOST:PORT` lines built from `targets` (token -> "host:port"), and waits
 * (at most `timeoutMs`, default 15 000) until it accepts connections. `logFile`: its output goes
 * there rather than through a pipe (see `startProcess`).
 */
export async function startWebsockify(
  targets: Record<string, string>,
  options: { web?: string; timeoutMs?: number; logFile?: string } = {},
): Promise<Websockify> {
  if (!isWebsockifyAvailable()) {
    throw new Error('websockify is not on PATH: install it (Debian: apt-get install -y websockify)');
  }
  for (const [token, target] of Object.entries(targets)) {
    // TokenFile splits each line at ': ' and the target at ':'; anything else would be misread silently.
    if (!/^[A-Za-z0-9_-]+$/.test(token) || !/^[^\s:]+:\d+$/.test(target)) {
      throw new Error(`bad websockify target ${token}: ${target}`);
    }
  }
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  const tokenDirectory = mkdtempSync(join(tmpdir(), 'keyhole-websockify-'));
  writeFileSync(
    join(tokenDirectory, 'tokens'),
    Object.entries(targets)
      .map(([token, target]) => `${token}: ${target}\n`)
      .join(''),
  );
  const removeDirectory = (): void => rmSync(tokenDirectory, { recursive: true, force: true });

  // A port picked by binding 0 can be taken before websockify binds it: retry with a new one then.
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const args = [
      '--token-plugin',
      'TokenFile',
      '--token-source',
      tokenDirectory,
      ...(options.web ? ['--web', options.web] : []),
      `127.0.0.1:${port}`,
    ];
    let websockify: ManagedProcess | undefined;
    const cancel = new AbortController();
    try {
      websockify = await startProcess('websockify', args, { env: { ...process.env, PYTHONUNBUFFERED: '1' }, logFile: options.logFile });
      const started = websockify;
      const listening = waitUntil(
        async () => closeSocket(await connectTcp(port, 1_000)).then(() => true),
        deadline - Date.now(),
        () => `websockify to listen on 127.0.0.1:${port}.\n  command: ${started.commandLine}\n  output:\n${started.output()}`,
        { intervalMs: 50, retryErrors: true, signal: cancel.signal },
      );
      await Promise.race([listening, failOnExit(started, 'websockify', 'while starting')]);
      let stopping: Promise<void> | undefined;
      return {
        port,
        pid: started.pid,
        commandLine: started.commandLine,
        output: () => started.output(),
        stop: () =>
          (stopping ??= (async () => {
            await started.stop();
            removeDirectory();
          })()),
      };
    } catch (error) {
      cancel.abort();
      await websockify?.stop();
      const portTaken = error instanceof Error && /Address already in use/i.test(error.message);
      if (!portTaken || attempt >= 3 || Date.now() >= deadline) {
        removeDirectory();
        throw error;
      }
    }
  }
}
