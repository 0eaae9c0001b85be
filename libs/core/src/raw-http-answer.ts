import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';

/**
 * Answers on a raw socket (a refused websocket upgrade, a request Node's HTTP parser refused) with
 * a JSON body, never stored or sniffed, and closes: `Connection: close`, then the socket is
 * destroyed once the bytes are out. A socket that can no longer be written is destroyed at once.
 * The body is the caller's fixed error: nothing of the request (its path and query hold tokens).
 */
export function endWithJson(socket: Duplex, status: number, body: object, headers: Readonly<Record<string, string>> = {}): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const text = JSON.stringify(body);
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n` +
      'Connection: close\r\nContent-Type: application/json; charset=utf-8\r\nCache-Control: no-store\r\n' +
      'X-Content-Type-Options: nosniff\r\n' +
      Object.entries(headers)
        .map(([name, value]) => `${name}: ${value}\r\n`)
        .join('') +
      `Content-Length: ${Buffer.byteLength(text)}\r\n\r\n${text}`,
  );
  socket.once('finish', destroyAfterFinish);
}

/** A 'finish' listener: once our last bytes are out, nothing more can come or go. */
export function destroyAfterFinish(this: Duplex): void {
  this.destroy();
}

/**
 * The status for a request that Node's HTTP parser refused (a server's 'clientError'): 408 when
 * it was too slow, 431 when its headers were too large, else 400. Null for a connection reset
 * (nothing to answer).
 */
export function clientErrorStatus(error: Error & { code?: string }): number | null {
  if (error.code === 'ECONNRESET') {
    return null;
  }
  if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    return 408;
  }
  return error.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
}
