import { createServer, Server, Socket } from 'node:net';

export interface TcpUpstream {
  port: number;
  server: Server;
  /** Every accepted connection, in order. */
  connections: Socket[];
  /** Resolves with the next accepted connection. */
  nextConnection: () => Promise<Socket>;
  close: () => Promise<void>;
}

/**
 * A TCP server on 127.0.0.1 and a free port (or `port`, for a fixture that names one);
 * `onConnection` decides what it does. With `allowHalfOpen`, a client's end does not end the
 * server's side (half-close tests).
 */
export async function startTcpUpstream(
  onConnection: (socket: Socket) => void = () => undefined,
  { allowHalfOpen = false, port: wantedPort = 0 }: { allowHalfOpen?: boolean; port?: number } = {},
): Promise<TcpUpstream> {
  const connections: Socket[] = [];
  const waiters: ((socket: Socket) => void)[] = [];
  const server = createServer({ allowHalfOpen }, (socket) => {
    connections.push(socket);
    socket.on('error', () => undefined);
    onConnection(socket);
    waiters.shift()?.(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(wantedPort, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as { port: number };
  return {
    port,
    server,
    connections,
    nextConnection: () => new Promise((resolve) => waiters.push(resolve)),
    close: async () => {
      for (const socket of connections) {
        socket.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Echoes every byte back. */
export const echo = (socket: Socket): void => {
  socket.pipe(socket);
};
