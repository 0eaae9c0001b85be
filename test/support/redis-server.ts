import { ChildProcess, spawn } from 'node:child_process';
import { connect } from 'node:net';
import { Redis } from 'ioredis';
import { freePort } from './real/network';
import { waitUntil, withDeadline } from './wait';

/*
 * A redis-server of the test's own (never the shared one on 6379), on a free port of 127.0.0.1,
 * without persistence, that a test can stop, freeze (SIGSTOP: a Redis that stops answering) and
 * restart on the same port under the feet of the code that uses it.
 */

const START_TIMEOUT_MS = 5_000;
const STOP_TIMEOUT_MS = 5_000;

export interface TestRedisServer {
  port: number;
  /** redis://127.0.0.1:PORT */
  url: string;
  /** Whether a redis-server process is running (started, not stopped). */
  readonly running: boolean;
  /** A plain ioredis client that knows nothing of keyhole; closed by `stop()` and `close()`. */
  client(): Redis;
  /** Freezes the server (SIGSTOP): connections stay open, nothing is answered. */
  pause(): void;
  /** Lets a frozen server run again (SIGCONT). */
  resume(): void;
  /** Kills the server at once (SIGKILL), as a crash would; resolves when it has exited. */
  kill(): Promise<void>;
  /** Starts a fresh, empty server on the same port; resolves when it answers PING. */
  restart(): Promise<void>;
  /** Stops the server and closes every client; safe to call twice. */
  close(): Promise<void>;
}

/** Starts `redis-server --port P --bind 127.0.0.1 --save '' --appendonly no` and waits for PING. */
export async function startRedisServer(): Promise<TestRedisServer> {
  const port = await freePort();
  const clients = new Set<Redis>();
  let child: ChildProcess | undefined = await spawnRedis(port);

  const stopChild = async (signal: NodeJS.Signals): Promise<void> => {
    const current = child;
    child = undefined;
    if (!current || current.exitCode !== null || current.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => current.once('exit', () => resolve()));
    current.kill('SIGCONT');
    current.kill(signal);
    await withDeadline(exited, STOP_TIMEOUT_MS, `redis-server on port ${port} to exit`).catch(() => {
      current.kill('SIGKILL');
      return withDeadline(exited, STOP_TIMEOUT_MS, `redis-server on port ${port} to exit after SIGKILL`);
    });
  };

  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get running() {
      return child !== undefined;
    },
    client() {
      const client = new Redis({ host: '127.0.0.1', port, lazyConnect: false, maxRetriesPerRequest: 1, connectTimeout: 2_000, commandTimeout: 2_000 });
      // Test clients live through restarts; a refused reconnect is expected, not an error to print.
      client.on('error', () => undefined);
      clients.add(client);
      return client;
    },
    pause() {
      child?.kill('SIGSTOP');
    },
    resume() {
      child?.kill('SIGCONT');
    },
    kill: () => stopChild('SIGKILL'),
    async restart() {
      await stopChild('SIGKILL');
      child = await spawnRedis(port);
    },
    async close() {
      for (const client of clients) client.disconnect();
      clients.clear();
      await stopChild('SIGTERM');
    },
  };
}

async function spawnRedis(port: number): Promise<ChildProcess> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let output = '';
  for (;;) {
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // Kept short: only for the error message when the server does not come up.
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString('utf8')).slice(-2_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    let exited = false;
    let spawnError: Error | undefined;
    child.once('exit', () => (exited = true));
    child.once('error', (error) => {
      spawnError = error;
      exited = true;
    });
    // A test process that dies must not leave a server behind.
    const killOnExit = () => child.kill('SIGKILL');
    process.once('exit', killOnExit);
    child.once('exit', () => process.off('exit', killOnExit));

    // true once it answers PING, false when it exited.
    const answered = await waitUntil(
      async () => (exited ? false : (await pings(port)) || undefined),
      deadline - Date.now(),
      () => `redis-server on port ${port} to answer PING: ${output}`,
      { intervalMs: 20 },
    ).catch((error: unknown) => {
      child.kill('SIGKILL');
      throw error;
    });
    if (answered) return child;
    if (spawnError) throw new Error(`could not start redis-server: ${spawnError.message}`);
    // Exited at start (the port may still be held by the previous server a moment): try again.
    if (Date.now() >= deadline) throw new Error(`redis-server on port ${port} exited at start: ${output}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** One PING over a raw socket: true when +PONG comes back within 250 ms. */
function pings(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let answer = '';
    const done = (result: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => done(false), 250);
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (data) => {
      answer += data.toString('utf8');
      if (answer.includes('\r\n')) done(answer.startsWith('+PONG'));
    });
    socket.on('error', () => done(false));
  });
}
