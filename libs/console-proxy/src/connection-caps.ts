import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { endWithJson } from '@keyhole/core';

/** Why a new connection was refused before its request head was read (a metric label). */
export type ConnectionCapReason = 'per_address' | 'total';

export interface ConnectionCaps {
  /** Most unauthenticated connections from one TCP peer address. */
  perAddress: number;
  /** Most unauthenticated connections in all (per process). */
  total: number;
}

/** The answers to a connection over a cap: fixed JSON bodies, like the proxy's other errors. */
export const CONNECTION_CAP_ANSWERS: { readonly [R in ConnectionCapReason]: { status: number; code: string; message: string } } = {
  per_address: { status: 429, code: 'TOO_MANY_CONNECTIONS', message: 'too many pending connections from this address' },
  total: { status: 503, code: 'TOO_MANY_CONNECTIONS', message: 'too many pending connections' },
};

/**
 * Caps the connections that are not yet authenticated: from accept until their upgrade is granted
 * (`granted(socket)`), their plain HTTP request is answered, or they close. The cap is checked when
 * the connection is accepted, before any header is read, so it counts by TCP peer address (never
 * by `X-Forwarded-For`). A connection over a cap gets its fixed answer at once (429 per address,
 * 503 in total, both with `Retry-After: 1`) and is closed; `refused(reason)` counts it.
 * Returns the function that releases a socket whose upgrade was granted.
 */
export function capPendingConnections(
  server: Server,
  caps: ConnectionCaps,
  refused: (reason: ConnectionCapReason) => void,
): (socket: Duplex) => void {
  const byAddress = new Map<string, number>();
  const pending = new Map<Duplex, string>();
  const release = (socket: Duplex): void => {
    const address = pending.get(socket);
    if (address === undefined) {
      return;
    }
    pending.delete(socket);
    const left = (byAddress.get(address) ?? 1) - 1;
    if (left > 0) {
      byAddress.set(address, left);
    } else {
      byAddress.delete(address);
    }
  };
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress ?? '';
    const fromAddress = byAddress.get(address) ?? 0;
    const reason: ConnectionCapReason | null = fromAddress >= caps.perAddress ? 'per_address' : pending.size >= caps.total ? 'total' : null;
    if (reason !== null) {
      socket.on('error', ignore);
      refused(reason);
      const answer = CONNECTION_CAP_ANSWERS[reason];
      endWithJson(socket, answer.status, { code: answer.code, message: answer.message }, { 'Retry-After': '1' });
      // Nothing of this connection goes to the HTTP parser: the answer is already written.
      socket.pause();
      // A client that does not read our answer must not hold the socket either.
      setTimeout(() => socket.destroy(), 1_000).unref();
      return;
    }
    pending.set(socket, address);
    byAddress.set(address, fromAddress + 1);
    socket.once('close', () => release(socket));
  });
  server.on('request', (request: IncomingMessage, response: ServerResponse) => {
    response.once('finish', () => release(request.socket));
  });
  return release;
}

function ignore(): void {}
