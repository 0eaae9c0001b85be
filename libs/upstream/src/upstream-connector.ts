import { connect } from 'node:net';
import type { Duplex } from 'node:stream';
import { performance } from 'node:perf_hooks';
import type { ConnectTurns } from './connect-turns';
import { UpstreamError } from './upstream.errors';

export interface UpstreamTarget {
  host: string;
  port: number;
  /** When set, an HTTP CONNECT for this path is sent first (Nova's internal_access_path). */
  internalAccessPath: string | null;
}

/**
 * Opens a byte stream to `host:port` within `timeoutMs`, the way one kind of route reaches its
 * consoles (a TCP connect, an SSH channel, a connector's UNIX socket). It rejects with an
 * UpstreamError, never hangs, and resolves with a stream that has not been read yet.
 */
export type Dialer = (destination: { host: string; port: number }, timeoutMs: number) => Promise<Duplex>;

/** Bound on the CONNECT response head; a longer one is refused rather than buffered. */
const MAX_CONNECT_RESPONSE_BYTES = 4096;

/**
 * Opens the console's stream with `dial` (default: a TCP connect from this network namespace),
 * then, for an internal access path, `CONNECT <path> HTTP/1.1` and proceed only on status 200.
 * Exactly the response head is consumed: bytes the console sent after it (an RFB banner in the
 * same segment) are put back for the caller (Nova bug 1695844).
 *
 * With `turns`, connects to the same console take turns (see ConnectTurns); `timeoutMs` bounds
 * the wait for the turn and the dial together. The console's bytes stay in the socket until
 * the caller reads them ('data' listener, resume()).
 */
export async function connectUpstream(
  target: UpstreamTarget,
  timeoutMs: number,
  turns?: ConnectTurns,
  dial: Dialer = dialTcp,
): Promise<Duplex> {
  const startedAt = performance.now();
  const release = turns ? await turns.take(`${target.host}:${target.port}`, timeoutMs) : undefined;
  let socket: Duplex;
  try {
    socket = await dial(target, Math.max(1, timeoutMs - (performance.now() - startedAt)));
  } catch (error) {
    release?.();
    throw error;
  }
  if (target.internalAccessPath === null) {
    if (release) {
      turns?.holdUntilSpoken(socket, release);
    }
    return socket;
  }
  try {
    // Rows Nova wrote are not validated by our API: never let a path split the request line.
    if (!/^[\x21-\x7e]{1,1024}$/.test(target.internalAccessPath)) {
      throw new UpstreamError('CONNECT malformed', 'internal access path is not a printable token');
    }
    await sendConnect(socket, target.internalAccessPath, timeoutMs);
    return socket;
  } catch (error) {
    socket.destroy();
    throw error;
  } finally {
    // Behind an internal access path the console is reached through a CONNECT proxy, whose answer
    // was its first bytes.
    release?.();
  }
}

/**
 * A TCP connect from this network namespace, with Nagle off (console traffic is small interactive
 * writes). `highWaterMark` overrides the socket's buffer bounds (a relay that pipes 64 KiB reads).
 */
export const dialTcp = (destination: { host: string; port: number }, timeoutMs: number, highWaterMark?: number): Promise<Duplex> =>
  new Promise((resolve, reject) => {
    const socket = connect({
      host: destination.host,
      port: destination.port,
      noDelay: true,
      ...(highWaterMark === undefined ? {} : { highWaterMark }),
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new UpstreamError('connect timeout', `no connection to the console within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      socket.destroy();
      const refused = error.code === 'ECONNREFUSED';
      reject(
        new UpstreamError(refused ? 'connect refused' : 'connect failed', `console connection failed (${error.code ?? 'error'})`, {
          cause: error,
        }),
      );
    });
  });

function sendConnect(socket: Duplex, path: string, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let received = Buffer.alloc(0);
    const finish = (error?: UpstreamError) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('end', onEnd);
      if (error) {
        reject(error);
      } else {
        resolve();
      }
    };
    const onData = (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const headEnd = received.indexOf('\r\n\r\n');
      if (headEnd === -1) {
        if (received.length > MAX_CONNECT_RESPONSE_BYTES) {
          finish(new UpstreamError('CONNECT malformed', 'CONNECT response head too long'));
        }
        return;
      }
      socket.pause();
      const statusLine = received.subarray(0, received.indexOf('\r\n')).toString('latin1');
      const rest = received.subarray(headEnd + 4);
      if (!/^HTTP\/1\.[01] 200(\s|$)/.test(statusLine)) {
        finish(new UpstreamError('CONNECT refused', `CONNECT was answered with "${statusLine.slice(0, 64)}"`));
        return;
      }
      if (rest.length > 0) {
        socket.unshift(rest);
      }
      finish();
    };
    const onError = (error: Error) =>
      finish(new UpstreamError('connect failed', 'console connection failed during CONNECT', { cause: error }));
    const onEnd = () => finish(new UpstreamError('CONNECT refused', 'console closed during CONNECT'));
    const timer = setTimeout(() => finish(new UpstreamError('connect timeout', `no CONNECT answer within ${timeoutMs} ms`)), timeoutMs);
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('end', onEnd);
    socket.write(`CONNECT ${path} HTTP/1.1\r\n\r\n`, 'latin1');
  });
}
