import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';

const REQUEST_TIMEOUT = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nCache-Control: no-store\r\nContent-Length: 0\r\n\r\n';

/**
 * Gives every new connection `timeoutMs` to deliver a whole request head (the upgrade request and
 * its headers); a slower client gets 408 and is closed (slowloris). Node's own `headersTimeout` is
 * set too, for later requests on a kept-alive connection, but it is only checked every 30 s
 * (`connectionsCheckingInterval`, fixed when the server is created), so the first head, the one
 * an attacker holds open, gets its own exact timer.
 */
export function boundRequestHeadTime(server: Server, timeoutMs: number): void {
  server.headersTimeout = timeoutMs;
  const deadlines = new WeakMap<Duplex, NodeJS.Timeout>();
  const arrived = (socket: Duplex): void => {
    clearTimeout(deadlines.get(socket));
    deadlines.delete(socket);
  };
  server.on('connection', (socket: Duplex) => {
    const deadline = setTimeout(() => {
      deadlines.delete(socket);
      socket.end(REQUEST_TIMEOUT);
      // A client that does not read our answer must not hold the socket either.
      setTimeout(() => socket.destroy(), 1_000).unref();
    }, timeoutMs);
    deadline.unref();
    deadlines.set(socket, deadline);
    socket.once('close', () => arrived(socket));
  });
  server.on('request', (request: IncomingMessage) => arrived(request.socket));
  server.on('upgrade', (_request: IncomingMessage, socket: Duplex) => arrived(socket));
}
