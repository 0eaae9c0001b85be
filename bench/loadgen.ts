import { createHash, randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import { createConnection, Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { WebSocket } from 'ws';
import type {
  ConnectJob,
  ConnectResult,
  FromGenerator,
  HttpJob,
  HttpResult,
  Job,
  SessionsJob,
  Target,
  ThroughputJob,
  ThroughputResult,
  ToGenerator,
} from './protocol';

/**
 * The load generator (`node bench/run.cjs --role=loadgen`, forked by the orchestrator). It runs one
 * job at a time, sent over IPC, with the same client code whatever the target: for keyhole and
 * websockify, a minimal RFC 6455 client on `net` for the connect and flood jobs (see
 * `WebSocketAttempt`) and `ws` for throughput and sessions (binary subprotocol, no compression, an
 * Origin like a browser's); `net` for direct TCP. Every loop is bounded by a count and a duration,
 * and every attempt by a timeout.
 */

let stopRequested = false;
const controlWaiters = new Map<string, () => void>();

function send(message: FromGenerator): void {
  process.send?.(message);
}

process.on('message', (message: ToGenerator) => {
  if (message.type === 'job') {
    stopRequested = false;
    run(message.job)
      .then((result) => send({ type: 'result', id: message.id, result }))
      .catch((error: unknown) =>
        send({ type: 'error', id: message.id, message: error instanceof Error ? (error.stack ?? error.message) : String(error) }),
      );
  } else if (message.type === 'stop') {
    stopRequested = true;
  } else {
    controlWaiters.get(message.type)?.();
  }
});
process.on('disconnect', () => process.exit(0));
send({ type: 'ready' });

function run(job: Job): Promise<ConnectResult | ThroughputResult | HttpResult | { closed: number }> {
  switch (job.type) {
    case 'connect':
      return runConnect(job);
    case 'throughput':
      return runThroughput(job);
    case 'sessions':
      return runSessions(job);
    case 'http':
      return runHttp(job);
  }
}

function waitForControl(type: 'probe' | 'close', timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      controlWaiters.delete(type);
      resolve();
    }, timeoutMs);
    controlWaiters.set(type, () => {
      clearTimeout(timer);
      controlWaiters.delete(type);
      resolve();
    });
  });
}

function count(map: Record<string, number>, key: string): void {
  map[key] = (map[key] ?? 0) + 1;
}

function randomToken(): string {
  return randomBytes(32).toString('base64url');
}

function urlOf(target: Extract<Target, { kind: 'ws' }>, token: string | undefined): string {
  return target.url.replace('{token}', token ?? target.token ?? '');
}

function openWebSocket(target: Extract<Target, { kind: 'ws' }>, token: string | undefined, timeoutMs: number): WebSocket {
  return new WebSocket(urlOf(target, token), ['binary'], {
    perMessageDeflate: false,
    handshakeTimeout: timeoutMs,
    skipUTF8Validation: true,
    ...(target.origin ? { origin: target.origin } : {}),
  });
}

// ---------------------------------------------------------------------------------------------
// Connect latency (valid tokens: until the console's first bytes; invalid tokens: until refused)

interface Outcome {
  ok: boolean;
  reason: string;
  /** Closers still running (close handshakes), awaited at the end of the job. */
  closing?: Promise<void>;
}

/*
 * The websocket client of the connect and flood jobs: a minimal RFC 6455 client on `net` (a
 * browser's is native code). The `ws` client cost 0.4-0.9 ms of CPU per connect, as much as the
 * proxy under test and on the same two cores: it sat in the latency of every sequential connect
 * and was the bottleneck of the flood. This one sends what a browser sends, checks the answer
 * (status, Sec-WebSocket-Accept, Upgrade, Connection, subprotocol, no extension) and parses the
 * server's frames. What can be is prepared once per job (the request head around the token, the
 * keys with their accepts, the masked close frames); an attempt is one write and one parse.
 */

const WEBSOCKET_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** Keys and close-frame masks prepared per job and used in turn: random, and no hashing per attempt. */
const HANDSHAKE_SLOTS = 256;
/** More than this without the blank line that ends an HTTP head is not an answer. */
const MAX_HEAD_BYTES = 8 * 1024;
/** How long the server may take to close after our close frame before the socket is destroyed. */
const CLOSE_WAIT_MS = 5_000;
const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');
const STATUS_LINE = /^HTTP\/1\.[01] ([1-9]\d\d)[ \r]/;

interface WebSocketDialer {
  host: string;
  port: number;
  /** The request head is `beforeToken + token + beforeKey + key + afterKey`. */
  beforeToken: string;
  beforeKey: string;
  afterKey: string;
  /** The token of every attempt; undefined: a fresh random one per attempt (invalid-token jobs). */
  token: string | undefined;
  keys: string[];
  /** Sec-WebSocket-Accept expected for keys[i]: base64(sha1(key + GUID)). */
  accepts: string[];
  /** Close frames (code 1000) as a client sends them: masked, a random non-zero mask each. */
  closeFrames: Buffer[];
  next: number;
}

/** Parses the target once per job. Tokens (base64url) go into the request target as they are. */
function webSocketDialer(job: ConnectJob, target: Extract<Target, { kind: 'ws' }>): WebSocketDialer {
  const url = new URL(target.url);
  if (url.protocol !== 'ws:') {
    throw new Error(`connect jobs speak ws:// only, not ${target.url}`);
  }
  const requestTarget = `${url.pathname}${url.search}`;
  const placeholder = requestTarget.indexOf('{token}');
  if (placeholder < 0 && target.url.includes('{token}')) {
    throw new Error(`{token} must be in the query: ${target.url}`);
  }
  const tokenAt = placeholder < 0 ? requestTarget.length : placeholder;
  const afterToken = placeholder < 0 ? requestTarget.length : placeholder + '{token}'.length;
  const keyBytes = randomBytes(16 * HANDSHAKE_SLOTS);
  const keys: string[] = [];
  const accepts: string[] = [];
  const closeFrames: Buffer[] = [];
  for (let slot = 0; slot < HANDSHAKE_SLOTS; slot++) {
    const key = keyBytes.toString('base64', slot * 16, slot * 16 + 16);
    keys.push(key);
    accepts.push(
      createHash('sha1')
        .update(key + WEBSOCKET_GUID)
        .digest('base64'),
    );
    closeFrames.push(maskedCloseFrame());
  }
  return {
    host: url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname,
    port: url.port ? Number(url.port) : 80,
    beforeToken: `GET ${requestTarget.slice(0, tokenAt)}`,
    beforeKey: `${requestTarget.slice(afterToken)} HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: `,
    afterKey: `\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n${target.origin ? `Origin: ${target.origin}\r\n` : ''}\r\n`,
    token: job.tokenMode === 'invalid' ? undefined : (target.token ?? ''),
    keys,
    accepts,
    closeFrames,
    next: 0,
  };
}

/** FIN + close, masked, length 2: status code 1000. */
function maskedCloseFrame(): Buffer {
  const frame = Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
  let mask = randomBytes(4);
  while (mask.readUInt32BE(0) === 0) {
    mask = randomBytes(4);
  }
  mask.copy(frame, 2);
  frame[6] ^= mask[0];
  frame[7] ^= mask[1];
  return frame;
}

/** The value of the header `needle` (`\r\n<lower-case name>:`) in `source`, trimmed; `lower` is `source` in lower case. */
function headerValue(source: string, lower: string, needle: string): string | undefined {
  const at = lower.indexOf(needle);
  if (at < 0) {
    return undefined;
  }
  const start = at + needle.length;
  return source.slice(start, lower.indexOf('\r\n', start)).trim();
}

function attemptWebSocket(job: ConnectJob, dialer: WebSocketDialer): Promise<Outcome> {
  return new Promise((resolve) => new WebSocketAttempt(job, dialer, resolve).start());
}

/**
 * One connect: head (request sent, answer awaited), open (101 checked, counting payload bytes),
 * closing (our close frame sent, discarding until the server closes), ended (both close frames
 * exchanged, our side ended), done (closed or destroyed). A refusal or a failure before the
 * websocket is open destroys the socket; an open websocket is closed with a close handshake.
 */
class WebSocketAttempt {
  private phase: 'head' | 'open' | 'closing' | 'ended' | 'done' = 'head';
  private readonly invalid: boolean;
  private readonly slot: number;
  private readonly socket: Socket;
  private timer: NodeJS.Timeout | undefined;
  /** A response head, or a frame header, split over chunks (rare: kept until the rest arrives). */
  private partial: Buffer | undefined;
  private payloadLeft = 0;
  private received = 0;
  private closed: (() => void) | undefined;

  constructor(
    private readonly job: ConnectJob,
    private readonly dialer: WebSocketDialer,
    private readonly resolve: (outcome: Outcome) => void,
  ) {
    this.invalid = job.tokenMode === 'invalid';
    this.slot = dialer.next;
    dialer.next = (dialer.next + 1) % HANDSHAKE_SLOTS;
    this.socket = createConnection({ host: dialer.host, port: dialer.port, noDelay: true });
  }

  start(): void {
    const { socket, dialer } = this;
    socket.on('data', (chunk: Buffer) => (this.phase === 'head' ? this.readHead(chunk) : this.readFrames(chunk, 0)));
    socket.on('close', () => this.onClose());
    socket.on('error', (error: Error & { code?: string }) => this.onError(error));
    this.timer = setTimeout(() => this.finish(false, 'timeout', this.phase === 'open'), this.job.attemptTimeoutMs);
    // Written before the connect completes: net sends it as soon as it does.
    socket.write(
      dialer.beforeToken + (dialer.token ?? randomToken()) + dialer.beforeKey + dialer.keys[this.slot] + dialer.afterKey,
      'latin1',
    );
  }

  private readHead(chunk: Buffer): void {
    let data = chunk;
    if (this.partial) {
      data = Buffer.concat([this.partial, chunk]);
      this.partial = undefined;
    }
    const end = data.indexOf(HEAD_END);
    if (end < 0 && data.length <= MAX_HEAD_BYTES) {
      this.partial = data;
      return;
    }
    if (end < 0 || end > MAX_HEAD_BYTES) {
      return this.fail('bad response head');
    }
    // Up to the last header's CRLF, so that every header line starts and ends with one.
    const head = data.toString('latin1', 0, end + 2);
    const status = STATUS_LINE.exec(head)?.[1];
    if (status === undefined) {
      return this.fail('bad response head');
    }
    // Refused before the upgrade (keyhole answers 401 to a bad token).
    if (status !== '101') {
      return this.finish(this.invalid, `http ${status}`, false);
    }
    const problem = this.upgradeProblem(head);
    if (problem) {
      return this.fail(problem);
    }
    this.phase = 'open';
    if (end + 4 < data.length) {
      this.readFrames(data, end + 4);
    }
  }

  /** What RFC 6455 (4.1) asks a client to check in a 101 answer; undefined when all is well. */
  private upgradeProblem(head: string): string | undefined {
    const lower = head.toLowerCase();
    if (headerValue(head, lower, '\r\nsec-websocket-accept:') !== this.dialer.accepts[this.slot]) {
      return 'bad accept';
    }
    if (headerValue(lower, lower, '\r\nupgrade:') !== 'websocket') {
      return 'bad upgrade';
    }
    if (
      !headerValue(lower, lower, '\r\nconnection:')
        ?.split(',')
        .some((option) => option.trim() === 'upgrade')
    ) {
      return 'bad upgrade';
    }
    if (headerValue(head, lower, '\r\nsec-websocket-protocol:') !== 'binary') {
      return 'bad subprotocol';
    }
    if (lower.includes('\r\nsec-websocket-extensions:')) {
      return 'bad extensions';
    }
    return undefined;
  }

  /** Server frames: unmasked, data payloads counted while open, control frames whole, pings ignored. */
  private readFrames(chunk: Buffer, from: number): void {
    if (this.phase === 'ended' || this.phase === 'done') {
      return;
    }
    let data = chunk;
    let offset = from;
    if (this.partial) {
      data = Buffer.concat([this.partial, chunk.subarray(from)]);
      this.partial = undefined;
      offset = 0;
    }
    while (offset < data.length) {
      if (this.payloadLeft > 0) {
        const take = Math.min(this.payloadLeft, data.length - offset);
        this.payloadLeft -= take;
        offset += take;
        if (this.phase === 'open') {
          this.received += take;
          if (this.received >= this.job.expectBytes) {
            this.finish(!this.invalid, this.invalid ? 'accepted an invalid token' : 'ok', true);
          }
        }
        continue;
      }
      const available = data.length - offset;
      if (available < 2) {
        break;
      }
      const first = data[offset];
      const second = data[offset + 1];
      // No extension was negotiated, so no RSV bit; a server never masks.
      if (second & 0x80) {
        return this.fail('masked server frame');
      }
      if (first & 0x70) {
        return this.fail('bad frame');
      }
      const opcode = first & 0x0f;
      let length = second & 0x7f;
      let start = offset + 2;
      if (length === 126) {
        if (available < 4) {
          break;
        }
        length = data.readUInt16BE(offset + 2);
        start += 2;
      } else if (length === 127) {
        if (available < 10) {
          break;
        }
        length = data.readUInt32BE(offset + 2) * 0x1_0000_0000 + data.readUInt32BE(offset + 6);
        start += 8;
      }
      if (opcode <= 2) {
        // continuation, text, binary
        this.payloadLeft = length;
        offset = start;
        continue;
      }
      if (opcode < 8 || opcode > 10 || length > 125 || !(first & 0x80)) {
        return this.fail('bad frame');
      }
      if (data.length < start + length) {
        break;
      }
      if (opcode === 8) {
        return this.onCloseFrame(length >= 2 ? data.readUInt16BE(start) : 1005);
      }
      offset = start + length; // ping, pong
    }
    if (offset < data.length) {
      this.partial = data.subarray(offset);
    }
  }

  private onCloseFrame(code: number): void {
    // Before enough data, the close is the outcome (and answered); either way both close frames
    // have now been exchanged, so our side ends and the server closes the connection.
    if (this.phase === 'open') {
      this.finish(this.invalid, `closed ${code} before data`, true);
    }
    this.phase = 'ended';
    this.socket.end();
  }

  private onClose(): void {
    if (this.phase === 'head') {
      this.finish(this.invalid, 'closed before data', false);
    } else if (this.phase === 'open') {
      this.finish(this.invalid, 'closed 1006 before data', false);
    } else {
      this.closed?.();
    }
    this.phase = 'done';
  }

  private onError(error: Error & { code?: string }): void {
    // websockify refuses an unknown token by hanging up before answering the upgrade. After the
    // upgrade, a lost connection is an abnormal close (1006), as a browser reports it.
    if (this.phase === 'head') {
      this.finish(this.invalid, `error ${error.code ?? error.message}`, false);
    } else if (this.phase === 'open') {
      this.finish(this.invalid, 'closed 1006 before data', false);
    }
  }

  /** A protocol failure: the attempt failed (unless already settled) and the socket goes. */
  private fail(reason: string): void {
    if (this.phase === 'head' || this.phase === 'open') {
      this.finish(false, reason, false);
    } else {
      this.socket.destroy();
    }
  }

  /** Settles the attempt once. graceful: send our close frame and let the server close (bounded). */
  private finish(ok: boolean, reason: string, graceful: boolean): void {
    if (this.phase !== 'head' && this.phase !== 'open') {
      return;
    }
    clearTimeout(this.timer);
    let closing: Promise<void> | undefined;
    if (graceful) {
      this.phase = 'closing';
      this.socket.write(this.dialer.closeFrames[this.slot]);
      const kill = setTimeout(() => this.socket.destroy(), CLOSE_WAIT_MS);
      closing = new Promise<void>((done) => {
        this.closed = () => {
          clearTimeout(kill);
          done();
        };
      });
    } else {
      this.phase = 'done';
      this.socket.destroy();
    }
    this.resolve({ ok, reason, closing });
  }
}

function attemptTcp(job: ConnectJob, target: Extract<Target, { kind: 'tcp' }>): Promise<Outcome> {
  return new Promise((resolve) => {
    let settled = false;
    let received = 0;
    const socket = createConnection({ host: target.host, port: target.port, noDelay: true });
    const timer = setTimeout(() => finish(false, 'timeout'), job.attemptTimeoutMs);
    const finish = (ok: boolean, reason: string): void => {
      if (settled) {
        return;
      }
      settled = true;
      clearTimeout(timer);
      socket.end();
      const closing = new Promise<void>((done) => {
        const kill = setTimeout(() => socket.destroy(), 2_000);
        kill.unref();
        socket.once('close', () => {
          clearTimeout(kill);
          done();
        });
      });
      resolve({ ok, reason, closing });
    };
    socket.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received >= job.expectBytes) {
        finish(true, 'ok');
      }
    });
    socket.on('close', () => finish(false, 'closed before data'));
    socket.on('error', (error: Error & { code?: string }) => finish(false, `error ${error.code ?? error.message}`));
  });
}

function attemptOf(job: ConnectJob): () => Promise<Outcome> {
  const target = job.target;
  if (target.kind === 'tcp') {
    return () => attemptTcp(job, target);
  }
  const dialer = webSocketDialer(job, target);
  return () => attemptWebSocket(job, dialer);
}

async function runConnect(job: ConnectJob): Promise<ConnectResult> {
  const result: ConnectResult = { latenciesMs: [], ok: 0, failed: 0, failures: {}, refusals: {}, elapsedMs: 0 };
  const started = performance.now();
  const deadline = started + job.durationMs;
  const closings: Promise<void>[] = [];
  const attempt = attemptOf(job);
  let attempts = 0;
  const loop = async (): Promise<void> => {
    while (!stopRequested && attempts < job.maxCount && performance.now() < deadline) {
      attempts += 1;
      const begin = performance.now();
      const outcome = await attempt();
      const latency = performance.now() - begin;
      if (outcome.closing) {
        closings.push(outcome.closing);
      }
      if (outcome.ok) {
        result.ok += 1;
        result.latenciesMs.push(latency);
        if (job.tokenMode === 'invalid') {
          count(result.refusals, outcome.reason);
        }
      } else {
        result.failed += 1;
        count(result.failures, outcome.reason);
      }
      if (job.pauseMs) {
        await new Promise((resolve) => setTimeout(resolve, job.pauseMs));
      }
    }
  };
  await Promise.all(Array.from({ length: job.concurrency }, loop));
  result.elapsedMs = performance.now() - started;
  await Promise.all(closings);
  return result;
}

// ---------------------------------------------------------------------------------------------
// Throughput of one bulk stream

/**
 * A websocket whose frames we write ourselves: the upload pre-masks one 64 KiB frame (a random,
 * non-zero key, as a browser's) and sends it again and again, so the generator does not spend its
 * CPU masking every frame in JavaScript. The proxy still unmasks every byte, as for a browser.
 */
function rawWebSocket(target: Extract<Target, { kind: 'ws' }>, timeoutMs: number): Promise<Socket> {
  const url = new URL(urlOf(target, undefined));
  return new Promise((resolve, reject) => {
    const request = http.request({
      host: url.hostname,
      port: url.port,
      path: `${url.pathname}${url.search}`,
      timeout: timeoutMs,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': randomBytes(16).toString('base64'),
        'Sec-WebSocket-Protocol': 'binary',
        ...(target.origin ? { Origin: target.origin } : {}),
      },
    });
    request.on('upgrade', (_response, socket: Socket, head: Buffer) => {
      if (head.length > 0) {
        socket.unshift(head);
      }
      socket.setNoDelay(true);
      resolve(socket);
    });
    request.on('response', (response) => {
      response.resume();
      reject(new Error(`upgrade refused: http ${response.statusCode}`));
    });
    request.on('timeout', () => request.destroy(new Error('upgrade timed out')));
    request.on('error', reject);
    request.end();
  });
}

function maskedFrame(payload: Buffer): Buffer {
  const header = Buffer.alloc(14);
  header[0] = 0x82; // FIN, binary
  header[1] = 0x80 | 127; // masked, 64-bit length
  header.writeBigUInt64BE(BigInt(payload.length), 2);
  let mask = randomBytes(4);
  while (mask.readUInt32BE(0) === 0) {
    mask = randomBytes(4);
  }
  mask.copy(header, 10);
  const masked = Buffer.alloc(payload.length);
  for (let index = 0; index < payload.length; index++) {
    masked[index] = payload[index] ^ mask[index & 3];
  }
  return Buffer.concat([header, masked]);
}

async function runThroughput(job: ThroughputJob): Promise<ThroughputResult> {
  const payload = randomBytes(job.chunkBytes);
  let counted = 0;
  let counting = false;
  let finished = false;
  let cleanup: () => void = () => undefined;
  const failure = new Promise<never>((_, reject) => {
    if (job.target.kind === 'tcp') {
      const socket = createConnection({ host: job.target.host, port: job.target.port, noDelay: true });
      socket.on('error', (error) => reject(error));
      socket.on('close', () => finished || reject(new Error('closed during the measurement')));
      cleanup = () => socket.destroy();
      if (job.direction === 'down') {
        socket.on('data', (chunk: Buffer) => counting && (counted += chunk.length));
      } else {
        socket.once('connect', () => pumpUpload(socket, payload));
      }
    } else if (job.direction === 'down') {
      const ws = openWebSocket(job.target, undefined, 10_000);
      ws.on('message', (data: Buffer) => counting && (counted += data.length));
      ws.on('error', (error) => reject(error));
      ws.on('close', (code) => finished || reject(new Error(`websocket closed (${code}) during the measurement`)));
      cleanup = () => ws.terminate();
    } else {
      const frame = maskedFrame(payload);
      rawWebSocket(job.target, 10_000).then((socket) => {
        socket.on('error', (error) => reject(error));
        socket.on('close', () => finished || reject(new Error('websocket closed during the measurement')));
        socket.resume(); // whatever the proxy sends (a ping) is read and dropped
        cleanup = () => socket.destroy();
        pumpUpload(socket, frame, job.chunkBytes);
      }, reject);
    }
  });
  failure.catch(() => undefined);
  // Uploads count payload bytes the kernel accepted; downloads count payload bytes received.
  function pumpUpload(socket: Socket, unit: Buffer, payloadBytes = unit.length): void {
    const write = (): void => {
      while (!finished && !socket.destroyed) {
        const accepted = socket.write(unit);
        if (counting) {
          counted += payloadBytes;
        }
        if (!accepted) {
          return;
        }
      }
    };
    socket.on('drain', write);
    write();
  }
  const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
  try {
    await Promise.race([sleep(job.warmupMs), failure]);
    counting = true;
    const begin = performance.now();
    await Promise.race([sleep(job.durationMs), failure]);
    counting = false;
    const seconds = (performance.now() - begin) / 1000;
    return { bytes: counted, seconds, megabytesPerSecond: counted / seconds / 1e6 };
  } finally {
    finished = true;
    cleanup();
  }
}

// ---------------------------------------------------------------------------------------------
// Concurrent idle sessions

interface HeldSession {
  probe(timeoutMs: number): Promise<boolean>;
  close(): Promise<void>;
  readonly closed: boolean;
}

/** Sends 4 random bytes and resolves whether the same 4 came back (an echo console) in time. */
function echoProbe(send: (data: Buffer) => void, onData: (handler: (data: Buffer) => void) => void, timeoutMs: number): Promise<boolean> {
  return new Promise<boolean>((done) => {
    const expected = randomBytes(4);
    let received = Buffer.alloc(0);
    const timer = setTimeout(() => done(false), timeoutMs);
    onData((data) => {
      received = Buffer.concat([received, data]);
      if (received.length >= 4) {
        clearTimeout(timer);
        done(received.subarray(0, 4).equals(expected));
      }
    });
    send(expected);
  });
}

/**
 * A session over a connection that has just opened: echo probes while it is open; closing asks for
 * an orderly close (`end`), waits for it at most 5 s, then `destroy`s what is left.
 */
function heldSession(connection: {
  onData: (listener: (data: Buffer) => void) => void;
  onClose: (listener: () => void) => void;
  send: (data: Buffer) => void;
  end: () => void;
  destroy: () => void;
}): HeldSession {
  let closed = false;
  let onData: ((data: Buffer) => void) | undefined;
  connection.onData((data) => onData?.(data));
  const closedPromise = new Promise<void>((done) =>
    connection.onClose(() => {
      closed = true;
      done();
    }),
  );
  return {
    get closed() {
      return closed;
    },
    probe: (probeTimeoutMs) =>
      closed
        ? Promise.resolve(false)
        : echoProbe(
            (data) => connection.send(data),
            (handler) => (onData = handler),
            probeTimeoutMs,
          ),
    close: async () => {
      connection.end();
      await Promise.race([closedPromise, new Promise((done) => setTimeout(done, 5_000))]);
      connection.destroy();
    },
  };
}

function holdWebSocket(target: Extract<Target, { kind: 'ws' }>, timeoutMs: number): Promise<HeldSession> {
  return new Promise((resolve, reject) => {
    const ws = openWebSocket(target, undefined, timeoutMs);
    ws.once('unexpected-response', (request, response) => {
      request.destroy();
      reject(new Error(`http ${response.statusCode}`));
    });
    ws.on('error', (error: Error & { code?: string }) => reject(new Error(error.code ?? error.message)));
    ws.once('close', () => reject(new Error('closed while opening')));
    ws.once('open', () =>
      resolve(
        heldSession({
          onData: (listener) => ws.on('message', listener),
          onClose: (listener) => ws.once('close', listener),
          send: (data) => ws.send(data, { binary: true }),
          // Both do nothing once the websocket is closed.
          end: () => ws.close(1000),
          destroy: () => ws.terminate(),
        }),
      ),
    );
  });
}

function holdTcp(target: Extract<Target, { kind: 'tcp' }>, timeoutMs: number): Promise<HeldSession> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: target.host, port: target.port, noDelay: true });
    const timer = setTimeout(() => socket.destroy(new Error('timeout')), timeoutMs);
    socket.on('error', (error: Error & { code?: string }) => reject(new Error(error.code ?? error.message)));
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(
        heldSession({
          onData: (listener) => socket.on('data', listener),
          onClose: (listener) => socket.once('close', listener),
          send: (data) => socket.write(data),
          end: () => socket.end(),
          destroy: () => socket.destroy(),
        }),
      );
    });
  });
}

async function runSessions(job: SessionsJob): Promise<{ closed: number }> {
  const sessions: HeldSession[] = [];
  const failures: Record<string, number> = {};
  let failed = 0;
  let next = 0;
  const started = performance.now();
  const deadline = started + job.openTimeoutMs;
  const opener = async (): Promise<void> => {
    while (!stopRequested && next < job.count && performance.now() < deadline) {
      next += 1;
      try {
        const target = job.target;
        sessions.push(
          target.kind === 'ws' ? await holdWebSocket(target, job.attemptTimeoutMs) : await holdTcp(target, job.attemptTimeoutMs),
        );
      } catch (error) {
        failed += 1;
        count(failures, error instanceof Error ? error.message : String(error));
        // A proxy that refuses is not hammered: back off a little.
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  };
  await Promise.all(Array.from({ length: job.openConcurrency }, opener));
  send({ type: 'opened', opened: sessions.length, failed, failures, elapsedMs: performance.now() - started });

  // Held until the orchestrator has measured; bounded so a lost orchestrator cannot keep them forever.
  await waitForControl('probe', 10 * 60_000);
  const closedDuringHold = sessions.filter((session) => session.closed).length;
  const probeStarted = performance.now();
  let alive = 0;
  // In slices, so 10,000 probes do not all wait on one event-loop turn.
  for (let index = 0; index < sessions.length; index += 500) {
    const results = await Promise.all(sessions.slice(index, index + 500).map((session) => session.probe(15_000)));
    alive += results.filter(Boolean).length;
  }
  send({ type: 'probed', alive, dead: sessions.length - alive, closedDuringHold, probeMs: performance.now() - probeStarted });

  await waitForControl('close', 10 * 60_000);
  for (let index = 0; index < sessions.length; index += 500) {
    await Promise.all(sessions.slice(index, index + 500).map((session) => session.close()));
  }
  return { closed: sessions.length };
}

// ---------------------------------------------------------------------------------------------
// HTTP (token API)

async function runHttp(job: HttpJob): Promise<HttpResult> {
  const url = new URL(job.url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: job.concurrency });
  const result: HttpResult = { latenciesMs: [], ok: 0, failed: 0, failures: {}, elapsedMs: 0, dropped: 0, tokens: [] };
  let tokenIndex = 0;
  const bodyOf = (): string => {
    if (job.body.kind === 'issue') {
      const { host, port, ttlSeconds } = job.body;
      return JSON.stringify({ instanceUuid: randomUUID(), consoleType: 'novnc', host, port, ...(ttlSeconds ? { ttlSeconds } : {}) });
    }
    const token = job.body.tokens[tokenIndex++ % job.body.tokens.length];
    return JSON.stringify({ token, cell: job.body.cell });
  };
  const request = (since: number): Promise<void> =>
    new Promise((resolve) => {
      const body = bodyOf();
      const finish = (ok: boolean, reason: string, answer?: string): void => {
        if (ok) {
          result.ok += 1;
          result.latenciesMs.push(performance.now() - since);
          if (answer !== undefined && result.tokens.length < job.collectTokens) {
            const token = (JSON.parse(answer) as { token?: string }).token;
            if (token) {
              result.tokens.push(token);
            }
          }
        } else {
          result.failed += 1;
          count(result.failures, reason);
        }
        resolve();
      };
      const outgoing = http.request(
        {
          agent,
          host: url.hostname,
          port: url.port,
          path: url.pathname,
          method: 'POST',
          timeout: 10_000,
          headers: { ...job.headers, 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
        },
        (response) => {
          const chunks: Buffer[] = [];
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            if (response.statusCode === job.expectStatus) {
              finish(true, 'ok', job.collectTokens > 0 ? text : undefined);
            } else {
              finish(false, `http ${response.statusCode} ${text.slice(0, 120)}`);
            }
          });
          response.on('error', (error) => finish(false, `error ${error.message}`));
        },
      );
      outgoing.on('timeout', () => outgoing.destroy(new Error('timeout')));
      outgoing.on('error', (error: Error & { code?: string }) => finish(false, `error ${error.code ?? error.message}`));
      outgoing.end(body);
    });

  const started = performance.now();
  const deadline = started + job.durationMs;
  let sent = 0;
  if (job.mode === 'closed') {
    const loop = async (): Promise<void> => {
      while (!stopRequested && sent < job.maxCount && performance.now() < deadline) {
        sent += 1;
        await request(performance.now());
      }
    };
    await Promise.all(Array.from({ length: job.concurrency }, loop));
  } else {
    // Open loop: requests leave on a fixed schedule whatever the answers do, and latency counts
    // from the scheduled time (no coordinated omission). In flight is bounded; beyond it, dropped.
    const periodMs = 1000 / job.ratePerSecond;
    const maxInFlight = Math.max(64, job.ratePerSecond);
    const inFlight = new Set<Promise<void>>();
    let nextAt = started;
    while (!stopRequested && sent < job.maxCount && performance.now() < deadline) {
      const now = performance.now();
      while (nextAt <= now && sent < job.maxCount) {
        sent += 1;
        if (inFlight.size >= maxInFlight) {
          result.dropped += 1;
        } else {
          const pending = request(nextAt);
          inFlight.add(pending);
          void pending.then(() => inFlight.delete(pending));
        }
        nextAt += periodMs;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(1, nextAt - performance.now()))));
    }
    await Promise.all(inFlight);
  }
  result.elapsedMs = performance.now() - started;
  agent.destroy();
  return result;
}
