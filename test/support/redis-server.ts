import { connect } from 'node:net';
import { Redis } from 'ioredis';
import { freePort } from './real/network';
import { ManagedProcess, startProcess } from './real/processes';
import { waitUntil } from './wait';

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
  let child: ManagedProcess | undefined = await spawnRedis(port);
  const signal = (name: NodeJS.Signals): void => {
    if (child && !child.hasExited()) {
      process.kill(child.pid, name);
    }
  };

  const stopChild = async (stopSignal: NodeJS.Signals): Promise<void> => {
    const current = child;
    // A frozen server must run again to act on the signal.
    signal('SIGCONT');
    child = undefined;
    await current?.stop(STOP_TIMEOUT_MS, stopSignal);
  };

  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get running() {
      return child !== undefined;
    },
    client() {
      const client = new Redis({
        host: '127.0.0.1',
        port,
        lazyConnect: false,
        maxRetriesPerRequest: 1,
        connectTimeout: 2_000,
        commandTimeout: 2_000,
      });
      // Test clients live through restarts; a refused reconnect is expected, not an error to print.
      client.on('error', () => undefined);
      clients.add(client);
      return client;
    },
    pause() {
      signal('SIGSTOP');
    },
    resume() {
      signal('SIGCONT');
    },
    kill: () => stopChild('SIGKILL'),
    async restart() {
      await stopChild('SIGKILL');
      child = await spawnRedis(port);
    },
    async close() {
      for (const client of clients) {
        client.disconnect();
      }
      clients.clear();
      await stopChild('SIGTERM');
    },
  };
}

async function spawnRedis(port: number): Promise<ManagedProcess> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    const server = await startProcess('redis-server', [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
    ]).catch((error: Error) => {
      throw new Error(`could not start redis-server: ${error.message}`);
    });
    // true once it answers PING, false when it exited.
    const answered = await waitUntil(
      async () => (server.hasExited() ? false : (await pings(port)) || undefined),
      deadline - Date.now(),
      () => `redis-server on port ${port} to answer PING: ${server.output().slice(-2_000)}`,
      { intervalMs: 20 },
    ).catch(async (error: unknown) => {
      await server.stop(0, 'SIGKILL');
      throw error;
    });
    if (answered) {
      return server;
    }
    // Exited at start (the port may still be held by the previous server a moment): try again.
    if (Date.now() >= deadline) {
      throw new Error(`redis-server on port ${port} exited at start: ${server.output().slice(-2_000)}`);
    }
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
      if (answer.includes('\r\n')) {
        done(answer.startsWith('+PONG'));
      }
    });
    socket.on('error', () => done(false));
  });
}
