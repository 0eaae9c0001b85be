import { connect } from 'node:net';

/*
 * HTTP/1.1 spoken by hand over a TCP socket, for requests no client library would send (broken
 * request lines, duplicate or oversized headers, truncated heads) and for answers read byte for
 * byte: what a fuzzer needs.
 */

export interface RawAnswer {
  status: number;
  /** Header names in lower case; repeated headers joined with ", ". */
  headers: Record<string, string>;
  body: string;
}

export interface RawExchange {
  /** The answer, once its head (and its body, when it announced one) arrived; undefined if none did. */
  answer?: RawAnswer;
  /** The server closed (or reset) the connection before a whole answer arrived. */
  closedWithoutAnswer: boolean;
  /** Nothing whole arrived and the server kept the connection open for `timeoutMs`. */
  timedOut: boolean;
  elapsedMs: number;
}

/**
 * Connects to 127.0.0.1:`port`, writes `request` (in `chunks` pieces when given, to split a head
 * across reads), and waits for one answer: up to its head for a 101, up to the end of its body
 * otherwise (Content-Length, chunked, or the close; `bodyless`: the head only, as for a HEAD
 * request). The socket is destroyed afterwards.
 */
export function exchangeRaw(
  port: number,
  request: Buffer | string,
  options: { timeoutMs: number; chunks?: number; bodyless?: boolean },
): Promise<RawExchange> {
  const started = Date.now();
  const bytes = typeof request === 'string' ? Buffer.from(request, 'latin1') : request;
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    let received = Buffer.alloc(0);
    let settled = false;
    const finish = (result: Omit<RawExchange, 'elapsedMs'>) => {
      if (settled) {
        return;
      }
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ ...result, elapsedMs: Date.now() - started });
    };
    const timer = setTimeout(
      () => finish({ answer: parseAnswer(received, true, options.bodyless), closedWithoutAnswer: false, timedOut: true }),
      options.timeoutMs,
    );
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const answer = parseAnswer(received, false, options.bodyless);
      if (answer) {
        finish({ answer, closedWithoutAnswer: false, timedOut: false });
      }
    });
    socket.on('close', () => {
      const answer = parseAnswer(received, true, options.bodyless);
      finish({ answer, closedWithoutAnswer: answer === undefined, timedOut: false });
    });
    socket.once('connect', () => {
      const pieces = Math.max(1, Math.min(options.chunks ?? 1, bytes.length));
      const size = Math.ceil(bytes.length / pieces);
      for (let offset = 0; offset < bytes.length; offset += size) {
        socket.write(bytes.subarray(offset, offset + size));
      }
    });
  });
}

/** The whole answer in `bytes`, or undefined while it is incomplete (`closed`: no more bytes will come). */
function parseAnswer(bytes: Buffer, closed: boolean, bodyless = false): RawAnswer | undefined {
  const headEnd = bytes.indexOf('\r\n\r\n');
  if (headEnd < 0) {
    return undefined;
  }
  const [statusLine, ...lines] = bytes.subarray(0, headEnd).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
  if (!status) {
    throw new Error(`not an HTTP status line: ${JSON.stringify(statusLine.slice(0, 200))}`);
  }
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  const rest = bytes.subarray(headEnd + 4);
  // An interim answer (100 Continue) comes before the real one.
  if (/^1\d\d$/.test(status[1]) && status[1] !== '101') {
    return parseAnswer(rest, closed, bodyless);
  }
  // No body: a switch of protocols, or an answer that never has one.
  if (bodyless || ['101', '204', '304'].includes(status[1])) {
    return { status: Number(status[1]), headers, body: '' };
  }
  const length = headers['content-length'];
  if (length !== undefined) {
    return rest.length >= Number(length)
      ? { status: Number(status[1]), headers, body: rest.subarray(0, Number(length)).toString('utf8') }
      : undefined;
  }
  if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
    const body = dechunk(rest);
    return body === undefined ? undefined : { status: Number(status[1]), headers, body };
  }
  return closed ? { status: Number(status[1]), headers, body: rest.toString('utf8') } : undefined;
}

/** A chunked body, or undefined until its last chunk arrived. */
function dechunk(bytes: Buffer): string | undefined {
  const parts: Buffer[] = [];
  let offset = 0;
  for (;;) {
    const lineEnd = bytes.indexOf('\r\n', offset);
    if (lineEnd < 0) {
      return undefined;
    }
    const size = parseInt(bytes.subarray(offset, lineEnd).toString('latin1'), 16);
    if (size === 0) {
      return Buffer.concat(parts).toString('utf8');
    }
    if (bytes.length < lineEnd + 2 + size + 2) {
      return undefined;
    }
    parts.push(bytes.subarray(lineEnd + 2, lineEnd + 2 + size));
    offset = lineEnd + 2 + size + 2;
  }
}
