import type { Socket } from 'node:net';

/** Bytes carried by a finished splice, each way. */
export interface SpliceStats {
  /** From the side that connected to the connector (the proxy, a tenant's client) to the other. */
  bytesForward: number;
  bytesBack: number;
}

/**
 * Carries bytes both ways between two sockets until both directions have ended, and resolves then.
 * Both sockets must allow half-open connections: the end of one direction is passed on as a
 * half-close and the other direction goes on (a client that sends its request and shuts down its
 * write side still gets the whole answer). pipe() stops reading a side while the other's write
 * buffer is full, so a slow reader holds at most a socket buffer's worth of bytes here. An error, a
 * reset or a destroy on either side destroys both.
 */
export function splice(client: Socket, destination: Socket): Promise<SpliceStats> {
  // The sockets count what they received, so no 'data' listener of ours sits on the byte path. What
  // was received and consumed before this splice (a request header, a status byte) is not carried;
  // what was received and is still buffered (bytes sent early, put back) is.
  const clientReadBefore = client.bytesRead - client.readableLength;
  const destinationReadBefore = destination.bytesRead - destination.readableLength;
  const stats = (): SpliceStats => ({
    bytesForward: client.bytesRead - clientReadBefore,
    bytesBack: destination.bytesRead - destinationReadBefore,
  });
  return new Promise((resolve) => {
    let open = 2;
    const destroyBoth = () => {
      client.destroy();
      destination.destroy();
    };
    for (const [socket, other] of [
      [client, destination],
      [destination, client],
    ] as const) {
      socket.on('error', destroyBoth);
      socket.once('close', () => {
        // Closed before both of its directions had ended (destroyed, reset, cut at shutdown): the
        // other side has lost its peer, and must not be left open.
        if (!socket.readableEnded || !socket.writableFinished) {
          other.destroy();
        }
        open -= 1;
        if (open === 0) {
          resolve(stats());
        }
      });
    }
    client.pipe(destination);
    destination.pipe(client);
  });
}
