import { createConnection, createServer, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { withDeadline } from '../test/support/wait';

/**
 * What keyhole's connect turns (libs/upstream) avoid, measured on this machine's kernel rather than
 * asserted by a test: three simultaneous connects, without turns, to a console that listens with a
 * backlog of 1 as QEMU's VNC server does and greets at accept. The backlog queues two; the third SYN
 * is dropped and sent again after the kernel's retransmission timeout (1 s on Linux). Returns the
 * time to the first byte of each connect, ms, slowest last.
 */
export async function measureSynRetry(connects = 3): Promise<number[]> {
  const accepted: Socket[] = [];
  const server = createServer((socket) => {
    accepted.push(socket);
    socket.on('error', () => undefined);
    socket.write('RFB 003.008\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, backlog: 1 }, resolve);
  });
  const { port } = server.address() as { port: number };
  const clients: Socket[] = [];
  try {
    const firstByte = (): Promise<number> => {
      const started = performance.now();
      const socket = createConnection({ host: '127.0.0.1', port });
      clients.push(socket);
      return new Promise((resolve, reject) => {
        socket.once('data', () => resolve(performance.now() - started));
        socket.once('error', reject);
      });
    };
    const times = await withDeadline(
      Promise.all(Array.from({ length: connects }, firstByte)),
      10_000,
      'the connects to a console with a listen backlog of 1',
    );
    return times.sort((a, b) => a - b);
  } finally {
    for (const socket of [...clients, ...accepted]) {
      socket.destroy();
    }
    await new Promise((resolve) => server.close(resolve));
  }
}
