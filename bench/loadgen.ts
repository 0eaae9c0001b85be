import { randomBytes, randomUUID } from 'node:crypto';
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
 * job at a time, sent over IPC, with the same client code whatever the target: `ws` for keyhole and
 * websockify (binary subprotocol, no compression, an Origin like a browser's), `net` for direct TCP.
 * Every loop is bounded by a count and a duration, and every attempt by a timeout.
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
      .catch((error: unknown) => send({ type: 'error', id: message.id, message: error instanceof Error ? (error.stack ?? error.message) : String(error) }));
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
  /** Closers still running (ws close handshakes), awaited at the end of the job. */
  closing?: Promise<void>;
}

function attemptWebSocket(job: ConnectJob, target: Extract<Target, { kind: 'ws' }>): Promise<Outcome> {
  const invalid = job.tokenMode === 'invalid';
  return new Promise((resolve) => {
    let settled = false;
    let received = 0;
    const ws = openWebSocket(target, invalid ? randomToken() : undefined, job.attemptTimeoutMs);
    const closed = new Promise<void>((done) => ws.once('close', () => done()));
    const timer = setTimeout(() => finish(false, 'timeout'), job.attemptTimeoutMs);
    const finish = (ok: boolean, reason: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (ws.readyState === WebSocket.OPEN) ws.close(1000);
      else if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
      // Never wait long for a peer's close handshake.
      const closing = Promise.race([closed, new Promise<void>((done) => setTimeout(done, 5_000).unref())]).then(() => {
        if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
      });
      resolve({ ok, reason, closing });
    };
    ws.on('message', (data: Buffer) => {
      received += data.length;
      if (received >= job.expectBytes) finish(!invalid, invalid ? 'accepted an invalid token' : 'ok');
    });
    ws.on('unexpected-response', (request, response) => {
      request.destroy();
      finish(invalid, `http ${response.statusCode}`);
    });
    ws.on('close', (code) => finish(invalid, `closed ${code} before data`));
    // websockify refuses an unknown token by hanging up before answering the upgrade.
    ws.on('error', (error: Error & { code?: string }) => finish(invalid, `error ${error.code ?? error.message}`));
  });
}

function attemptTcp(job: ConnectJob, target: Extract<Target, { kind: 'tcp' }>): Promise<Outcome> {
  return new Promise((resolve) => {
    let settled = false;
    let received = 0;
    const socket = createConnection({ host: target.host, port: target.port, noDelay: true });
    const timer = setTimeout(() => finish(false, 'timeout'), job.attemptTimeoutMs);
    const finish = (ok: boolean, reason: string): void => {
      if (settled) return;
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
      if (received >= job.expectBytes) finish(true, 'ok');
    });
    socket.on('close', () => finish(false, 'closed before data'));
    socket.on('error', (error: Error & { code?: string }) => finish(false, `error ${error.code ?? error.message}`));
  });
}

async function runConnect(job: ConnectJob): Promise<ConnectResult> {
  const result: ConnectResult = { latenciesMs: [], ok: 0, failed: 0, failures: {}, refusals: {}, elapsedMs: 0 };
  const started = performance.now();
  const deadline = started + job.durationMs;
  const closings: Promise<void>[] = [];
  let attempts = 0;
  const loop = async (): Promise<void> => {
    while (!stopRequested && attempts < job.maxCount && performance.now() < deadline) {
      attempts += 1;
      const begin = performance.now();
      const outcome = job.target.kind === 'ws' ? await attemptWebSocket(job, job.target) : await attemptTcp(job, job.target);
      const latency = performance.now() - begin;
      if (outcome.closing) closings.push(outcome.closing);
      if (outcome.ok) {
        result.ok += 1;
        result.latenciesMs.push(latency);
        if (job.tokenMode === 'invalid') count(result.refusals, outcome.reason);
      } else {
        result.failed += 1;
        count(result.failures, outcome.reason);
      }
      if (job.pauseMs) await new Promise((resolve) => setTimeout(resolve, job.pauseMs));
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
      if (head.length > 0) socket.unshift(head);
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
  while (mask.readUInt32BE(0) === 0) mask = randomBytes(4);
  mask.copy(header, 10);
  const masked = Buffer.alloc(payload.length);
  for (let index = 0; index < payload.length; index++) masked[index] = payload[index] ^ mask[index & 3];
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
        if (counting) counted += payloadBytes;
        if (!accepted) return;
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

function holdWebSocket(target: Extract<Target, { kind: 'ws' }>, timeoutMs: number): Promise<HeldSession> {
  return new Promise((resolve, reject) => {
    const ws = openWebSocket(target, undefined, timeoutMs);
    let closed = false;
    let onData: ((data: Buffer) => void) | undefined;
    ws.on('message', (data: Buffer) => onData?.(data));
    ws.once('unexpected-response', (request, response) => {
      request.destroy();
      reject(new Error(`http ${response.statusCode}`));
    });
    ws.on('error', (error: Error & { code?: string }) => reject(new Error(error.code ?? error.message)));
    const closedPromise = new Promise<void>((done) =>
      ws.once('close', () => {
        closed = true;
        reject(new Error('closed while opening'));
        done();
      }),
    );
    ws.once('open', () =>
      resolve({
        get closed() {
          return closed;
        },
        probe: (probeTimeoutMs) =>
          closed ? Promise.resolve(false) : echoProbe((data) => ws.send(data, { binary: true }), (handler) => (onData = handler), probeTimeoutMs),
        close: async () => {
          if (!closed) ws.close(1000);
          await Promise.race([closedPromise, new Promise((done) => setTimeout(done, 5_000))]);
          if (!closed) ws.terminate();
        },
      }),
    );
  });
}

function holdTcp(target: Extract<Target, { kind: 'tcp' }>, timeoutMs: number): Promise<HeldSession> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: target.host, port: target.port, noDelay: true });
    let closed = false;
    let onData: ((data: Buffer) => void) | undefined;
    const timer = setTimeout(() => socket.destroy(new Error('timeout')), timeoutMs);
    socket.on('data', (data: Buffer) => onData?.(data));
    socket.on('error', (error: Error & { code?: string }) => reject(new Error(error.code ?? error.message)));
    const closedPromise = new Promise<void>((done) =>
      socket.once('close', () => {
        closed = true;
        done();
      }),
    );
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve({
        get closed() {
          return closed;
        },
        probe: (probeTimeoutMs) =>
          closed ? Promise.resolve(false) : echoProbe((data) => socket.write(data), (handler) => (onData = handler), probeTimeoutMs),
        close: async () => {
          socket.end();
          await Promise.race([closedPromise, new Promise((done) => setTimeout(done, 5_000))]);
          socket.destroy();
        },
      });
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
        sessions.push(target.kind === 'ws' ? await holdWebSocket(target, job.attemptTimeoutMs) : await holdTcp(target, job.attemptTimeoutMs));
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
            if (token) result.tokens.push(token);
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
            if (response.statusCode === job.expectStatus) finish(true, 'ok', job.collectTokens > 0 ? text : undefined);
            else finish(false, `http ${response.statusCode} ${text.slice(0, 120)}`);
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
