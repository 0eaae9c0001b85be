import { randomBytes } from 'node:crypto';
import { createServer, Server, Socket } from 'node:net';

/**
 * The benchmark's consoles, in a process of their own (`node bench/run.cjs --role=upstreams`,
 * forked with an IPC channel), all on 127.0.0.1:
 *
 * - source: sends a bulk stream (64 KiB chunks of random bytes, with backpressure) until the peer
 *   leaves; reads and discards anything sent to it. The download side of the throughput figure.
 * - sink: reads and discards, never writes. The upload side of the throughput figure.
 * - echo: writes back what it reads (with backpressure). The idle sessions of the concurrency
 *   figure, which must answer a probe at the end to count as alive.
 * - banner: sends QEMU's RFB banner ("RFB 003.008\n") at once, then holds the connection: a
 *   console that answers instantly, to tell QEMU's own latency from the proxies'.
 *
 * It sends `{ type: 'ready', ports }` once listening, answers `{ type: 'stats' }` with the number
 * of open connections per server, and exits when the orchestrator disconnects.
 */

const CHUNK = randomBytes(64 * 1024);
const BANNER = Buffer.from('RFB 003.008\n', 'latin1');

type Kind = 'source' | 'sink' | 'echo' | 'banner';
const open: Record<Kind, number> = { source: 0, sink: 0, echo: 0, banner: 0 };

function serve(kind: Kind, handle: (socket: Socket) => void): Promise<Server> {
  const server = createServer({ noDelay: true }, (socket) => {
    open[kind] += 1;
    socket.on('error', () => undefined);
    socket.once('close', () => (open[kind] -= 1));
    handle(socket);
  });
  // A deep backlog: the concurrency figure opens thousands of connections in bursts.
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 }, () => resolve(server));
  });
}

function pumpSource(socket: Socket): void {
  socket.resume(); // discard anything sent to us
  const write = (): void => {
    let buffered = false;
    while (!socket.destroyed && !buffered) {
      buffered = !socket.write(CHUNK);
    }
  };
  socket.on('drain', write);
  write();
}

async function main(): Promise<void> {
  if (!process.send) {
    throw new Error('upstreams must be forked with an IPC channel');
  }
  const servers = {
    source: await serve('source', pumpSource),
    sink: await serve('sink', (socket) => socket.resume()),
    echo: await serve('echo', (socket) => socket.pipe(socket)),
    banner: await serve('banner', (socket) => {
      socket.resume();
      socket.write(BANNER);
    }),
  };
  const ports = Object.fromEntries(Object.entries(servers).map(([kind, server]) => [kind, (server.address() as { port: number }).port]));
  process.on('message', (message: { type?: string }) => {
    if (message.type === 'stats') {
      process.send?.({ type: 'stats', open: { ...open } });
    }
  });
  process.on('disconnect', () => process.exit(0));
  process.send({ type: 'ready', ports });
}

main().catch((error: unknown) => {
  process.stderr.write(`upstreams: ${error instanceof Error ? error.stack : String(error)}\n`);
  process.exit(1);
});
