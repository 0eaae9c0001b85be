import { createConnection, createServer, Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/** A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, release it). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') {
    throw new Error('could not read the port of a listening socket');
  }
  return address.port;
}

/** Opens a TCP connection, failing after `timeoutMs`. */
export async function connectTcp(port: number, timeoutMs: number, host = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connecting to ${host}:${port} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(error);
    });
  });
}

/** Connects, reads exactly the first `length` bytes the server sends, then closes. Fails after `timeoutMs`. */
export async function readFirstBytes(port: number, length: number, timeoutMs: number, host = '127.0.0.1'): Promise<Buffer> {
  const deadline = Date.now() + timeoutMs;
  const socket = await connectTcp(port, timeoutMs, host);
  try {
    return await new Promise<Buffer>((resolve, reject) => {
      let received = Buffer.alloc(0);
      const timer = setTimeout(
        () => reject(new Error(`${host}:${port} sent ${received.length} of ${length} bytes within ${timeoutMs} ms`)),
        Math.max(0, deadline - Date.now()),
      );
      socket.on('data', (chunk: Buffer) => {
        received = Buffer.concat([received, chunk]);
        if (received.length >= length) {
          clearTimeout(timer);
          resolve(received.subarray(0, length));
        }
      });
      socket.once('close', () => {
        clearTimeout(timer);
        reject(new Error(`${host}:${port} closed after ${received.length} of ${length} bytes`));
      });
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
  } finally {
    await closeSocket(socket);
  }
}

/** Ends a socket and resolves once it is fully closed (destroying it if the peer does not finish within 1 s). */
export async function closeSocket(socket: Duplex): Promise<void> {
  if (socket.closed) {
    return;
  }
  // Errors while closing (a reset from the peer) still end in 'close', which is all we wait for.
  socket.on('error', () => undefined);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => socket.destroy(), 1_000);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.end();
  });
}
