import { connect, Socket } from 'node:net';
import type { Dialer } from '@keyhole/upstream';
import { UpstreamError } from '@keyhole/upstream';
import { encodeHeader, STATUS_TEXT, statusName } from './connector-protocol';

/**
 * A Dialer that reaches consoles through the connector listening on the UNIX socket `socketPath`
 * (a route's `via: { connector: PATH }`): it opens the socket, sends the request header, and
 * resolves once the connector answered ok, with the socket paused and any console bytes that came
 * with the status put back. Everything is bounded by `timeoutMs`; every failure is an UpstreamError
 * whose reason says where it failed (`connector missing`, `connector refused: not allowed`, ...).
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
        socket.off('data', onData);
        socket.destroy();
        reject(error);
      };
      const onData = (chunk: Buffer) => {
        const status = statusName(chunk[0]);
        if (status === undefined) {
          fail(new UpstreamError('connector refused: unknown status', `the connector at ${socketPath} answered with status ${chunk[0]}`));
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
        socket.off('data', onData);
        socket.off('end', onEnd);
        socket.off('error', onError);
        socket.pause();
        // The console may have spoken in the same segment as the status (QEMU's RFB banner).
        if (chunk.length > 1) {
          socket.unshift(chunk.subarray(1));
        }
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
      socket.on('data', onData);
      socket.once('end', onEnd);
      socket.once('error', onError);
    });
}
