import { connect, Socket } from 'node:net';
import type { Dialer } from '@keyhole/upstream';
import { UpstreamError } from '@keyhole/upstream';
import { encodeHeader, STATUS_TEXT, statusName } from './connector-protocol';

/**
 * A Dialer that reaches consoles through the connector listening on the UNIX socket `socketPath`
 * (a route's `via: { connector: PATH }`): it opens the socket, sends the request header, and
 * resolves once the connector answered ok, with the socket not read any further: console bytes that
 * came with the status are still in it. Everything is bounded by `timeoutMs`; every failure is an
 * UpstreamError whose reason says where it failed (`connector missing`, `connector refused: not
 * allowed`, ...).
 */
export function connectorDialer(socketPath: string): Dialer {
  return (destination, timeoutMs) =>
    new Promise((resolve, reject) => {
      let header: Buffer;
      try {
        header = encodeHeader(destination);
      } catch (error) {
        reject(new UpstreamError('connector refused: malformed', 'the destination cannot be sent to a connector', { cause: error }));
        return;
      }
      const socket: Socket = connect({ path: socketPath, allowHalfOpen: true });
      let connected = false;
      const fail = (error: UpstreamError) => {
        clearTimeout(timer);
        socket.off('readable', onReadable);
        socket.destroy();
        reject(error);
      };
      // Paused mode, one byte: the status is consumed and the console's bytes that came with it stay
      // in the stream. Once the 'readable' listener is gone the stream is neither flowing nor
      // paused, so whoever reads it next ('data', pipe) starts it, as with a fresh TCP socket.
      const onReadable = () => {
        const byte = socket.read(1) as Buffer | null;
        if (byte === null) {
          return;
        }
        const status = statusName(byte[0]);
        if (status === undefined) {
          fail(new UpstreamError('connector refused: unknown status', `the connector at ${socketPath} answered with status ${byte[0]}`));
          return;
        }
        if (status !== 'ok') {
          const text = STATUS_TEXT[status];
          fail(
            new UpstreamError(
              `connector refused: ${text}`,
              `the connector at ${socketPath} refused ${destination.host}:${destination.port}: ${text}`,
            ),
          );
          return;
        }
        clearTimeout(timer);
        socket.off('readable', onReadable);
        socket.off('end', onEnd);
        socket.off('error', onError);
        resolve(socket);
      };
      const onEnd = () => fail(new UpstreamError('connector closed', `the connector at ${socketPath} closed before answering`));
      const onError = (error: NodeJS.ErrnoException) => {
        // No socket file: no connector runs here. A file nobody listens on: a connector that died.
        const missing = !connected && (error.code === 'ENOENT' || error.code === 'ECONNREFUSED');
        fail(
          new UpstreamError(
            missing ? 'connector missing' : 'connector failed',
            `connector socket ${socketPath}: ${error.code ?? 'error'}`,
            {
              cause: error,
            },
          ),
        );
      };
      const timer = setTimeout(
        () => fail(new UpstreamError('connect timeout', `no answer from the connector at ${socketPath} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      socket.once('connect', () => {
        connected = true;
        socket.write(header);
      });
      socket.on('readable', onReadable);
      socket.once('end', onEnd);
      socket.once('error', onError);
    });
}
