import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { endWithJson } from '@keyhole/core';
import { fixedErrorBody } from '@keyhole/web-clients';

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
      // The proxy's fixed JSON error, as for every other answer over plain HTTP.
      endWithJson(socket, 408, fixedErrorBody(408));
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
