import { CELL_CONNECTION_OPTIONS } from '@keyhole/db';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createServer, Socket, connect as connectTcp } from 'node:net';
import { Client } from 'pg';
import { testConfig } from '../support/config';
import { RunningProxy, startConsoleProxy } from '../support/console-proxy';
import { queryDatabase, SessionRow } from '../support/databases';
import { freePort } from '../support/real/network';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { stopAfterTests, Teardown } from '../support/teardown';
import { call } from '../support/token-api';
import { waitUntil, withDeadline } from '../support/wait';
import {
  ConsoleClient,
  ConsoleClientOptions,
  connectConsole,
  expectRefusedUpgrade,
  expectPolicyClose,
  expectUpgradeError,
} from '../support/websocket-client';
import { endedSessionOf, fingerprintOf, sessionRowsOf, sha256 } from './helpers';

/*
 * The console proxy of cell1, booted in-process exactly as production wires it, in front of real
 * TCP consoles (echo servers and purpose-built ones), with tokens issued through the real token API
 * and sessions recorded in the real cell database. Clients are real websocket clients.
 */

jest.setTimeout(30_000);

const MiB = 1024 * 1024;
const MAIN_INSTANCE = 'proxy-main';

interface IssuedToken {
  id: number;
  token: string;
  instanceUuid: string;
  consoleType: string;
  port: number;
  fingerprint: string;
}

let deployment: TestDeployment;
let proxy: RunningProxy;
let echoUpstream: TcpUpstream;
/** Every proxy started by this file, to read the logs of. */
const proxies: RunningProxy[] = [];
const teardown = new Teardown();
/** Every token issued by this file: none may ever appear in a log. */
const issuedTokens: string[] = [];

function proxyConfig(environment: Record<string, string> = {}) {
  return testConfig(deployment.controlUrl, {
    KEYHOLE_CELL_NAME: 'cell1',
    KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
    ...environment,
  });
}

async function startProxy(environment: Record<string, string> = {}): Promise<RunningProxy> {
  const started = teardown.add(await startConsoleProxy(proxyConfig(environment)));
  proxies.push(started);
  return started;
}

/** Closes a proxy as a SIGTERM does (once, however many times it is asked to). */
function closeProxyOnSignal(running: RunningProxy, signal: string): Promise<void> {
  // Nest 12's NestApplicationContext.close(signal?) runs the shutdown hooks with that signal, as
  // enableShutdownHooks does on SIGTERM; the INestApplication interface does not declare it.
  return teardown.stop(running, () => (running.app as unknown as { close: (signal?: string) => Promise<void> }).close(signal));
}

async function startUpstream(onConnection?: (socket: Socket) => void): Promise<TcpUpstream> {
  return teardown.add(await startTcpUpstream(onConnection));
}

async function issue(
  body: { consoleType?: string; port?: number; instanceUuid?: string; internalAccessPath?: string; ttlSeconds?: number } = {},
): Promise<IssuedToken> {
  const response = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
    key: deployment.agentKeys.cell1,
    body: { instanceUuid: randomUUID(), consoleType: 'novnc', host: '127.0.0.1', port: echoUpstream.port, ...body },
  });
  expect(response.status).toBe(201);
  issuedTokens.push(response.body.token);
  return response.body as IssuedToken;
}

/** Revokes one token, or every token of an instance, as cell1's agent; `revokedAt` is just before the request. */
async function revoke(what: { tokenId: number } | { instanceUuid: string }) {
  const revokedAt = Date.now();
  const path = 'tokenId' in what ? `/v1/cells/cell1/tokens/${what.tokenId}` : `/v1/cells/cell1/instances/${what.instanceUuid}/tokens`;
  const response = await call(deployment.api.baseUrl, 'DELETE', path, { key: deployment.agentKeys.cell1 });
  return { response, revokedAt };
}

function consoleUrl(running: RunningProxy, token: string): string {
  return `${running.wsBase}/websockify?token=${encodeURIComponent(token)}`;
}

function open(token: IssuedToken, options: ConsoleClientOptions & { via?: RunningProxy } = {}): Promise<ConsoleClient> {
  const { via = proxy, ...rest } = options;
  return connectConsole(consoleUrl(via, token.token), { protocols: ['binary'], ...rest });
}

const sessionRows = (tokenId: number): Promise<SessionRow[]> => sessionRowsOf(deployment.cellUrls.cell1, tokenId);

/** The one session row of a token, once it has ended and its end (with byte counts) is recorded. */
const endedSession = (tokenId: number, timeoutMs?: number): Promise<SessionRow> =>
  endedSessionOf(deployment.cellUrls.cell1, tokenId, timeoutMs);

/** Waits until the proxy's final write (close reason kept, byte counts updated) is visible. */
async function endedSessionWithBytes(
  tokenId: number,
  bytesToClient: number,
  bytesToUpstream: number,
  timeoutMs = 5_000,
): Promise<SessionRow> {
  return waitUntil(
    async () => {
      const rows = await sessionRows(tokenId);
      const row = rows[0];
      return row?.ended_at && Number(row.bytes_to_client) === bytesToClient && Number(row.bytes_to_upstream) === bytesToUpstream
        ? row
        : undefined;
    },
    timeoutMs,
    `the session of token ${tokenId} to be recorded with ${bytesToClient}/${bytesToUpstream} bytes`,
  );
}

async function liveSession(tokenId: number, timeoutMs = 5_000): Promise<SessionRow> {
  return waitUntil(
    async () => (await sessionRows(tokenId)).find((row) => row.ended_at === null),
    timeoutMs,
    `a live session of token ${tokenId}`,
  );
}

function once<T = void>(
  emitter: { once: (event: string, listener: (value: T) => void) => unknown },
  event: string,
  timeoutMs = 5_000,
): Promise<T> {
  return withDeadline(new Promise<T>((resolve) => emitter.once(event, resolve)), timeoutMs, `"${event}"`);
}

/** Bytes i -> i % 251: a stream whose every position can be checked (251 is prime, not a power of two). */
function patternBuffer(length: number): Buffer {
  const buffer = Buffer.alloc(length);
  for (let i = 0; i < length; i += 1) {
    buffer[i] = i % 251;
  }
  return buffer;
}

/** This process's heap and buffers: the proxies run in it. */
function processMemory(): number {
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.arrayBuffers;
}

/** Checks that consecutive chunks continue the i % 251 pattern from stream position 0. */
class PatternChecker {
  private readonly reference = patternBuffer(251 + 4 * MiB);
  position = 0;
  corruptAt: number | undefined;

  check = (chunk: Buffer): void => {
    for (let offset = 0; offset < chunk.length; offset += 4 * MiB) {
      const part = chunk.subarray(offset, offset + 4 * MiB);
      const start = (this.position + offset) % 251;
      if (this.corruptAt === undefined && !part.equals(this.reference.subarray(start, start + part.length))) {
        this.corruptAt = this.position + offset;
      }
    }
    this.position += chunk.length;
  };
}

beforeAll(async () => {
  deployment = teardown.add(await startTestDeployment(), (started) => started.stop());
  echoUpstream = await startUpstream(echo);
  proxy = await startProxy({ KEYHOLE_PROXY_INSTANCE: MAIN_INSTANCE });
}, 60_000);

stopAfterTests(teardown);

describe('byte pump', () => {
  it('carries every byte value both ways, whatever the message boundaries', async () => {
    const client = await open(await issue());
    expect(client.ws.protocol).toBe('binary');

    const allBytes = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    expect((await client.roundTrip(allBytes)).equals(allBytes)).toBe(true);

    // Messages of many sizes; the console sees one byte stream and the browser gets it back,
    // split however the network and the proxy like.
    const parts = [1, 2, 3, 100, 1000, 4096, 65_536, 65_537, 300_000].map((size) => randomBytes(size));
    const before = client.receivedBytes;
    for (const part of parts) {
      await client.send(part);
    }
    const expected = Buffer.concat(parts);
    const all = await client.waitForBytes(before + expected.length);
    expect(all.subarray(before).equals(expected)).toBe(true);

    // A text frame reaches the console as its UTF-8 bytes and comes back as binary.
    expect((await client.roundTrip('héllo, console')).equals(Buffer.from('héllo, console', 'utf8'))).toBe(true);
    await client.close();
  });

  it('carries 16 MiB each way intact', async () => {
    const size = 16 * MiB;
    const payload = randomBytes(size);
    const received = createHash('sha256');
    const token = await issue();
    const client = await open(token, { keepMessages: false, onMessage: (chunk) => received.update(chunk) });

    await client.sendInRandomChunks(payload);
    await client.waitForBytes(size, 20_000);
    expect(client.receivedBytes).toBe(size);
    expect(received.digest('hex')).toBe(sha256(payload));
    await client.close();
    await endedSessionWithBytes(token.id, size, size);
  });

  it('ends the console connection when the browser closes', async () => {
    const upstream = await startUpstream(echo);
    const token = await issue({ port: upstream.port });
    const connection = upstream.nextConnection();
    const client = await open(token);
    const socket = await withDeadline(connection, 5_000, 'the console connection');
    const ended = once(socket, 'end');
    const closed = once(socket, 'close');
    expect((await client.roundTrip('ping')).toString()).toBe('ping');

    expect((await client.close()).code).toBe(1000);
    await ended;
    await closed;
  });

  it('closes the websocket with 1000 when the console closes', async () => {
    const upstream = await startUpstream();
    const token = await issue({ port: upstream.port });
    const connection = upstream.nextConnection();
    const client = await open(token);
    const socket = await withDeadline(connection, 5_000, 'the console connection');
    socket.end('bye');

    const close = await client.waitForClose();
    expect(close).toMatchObject({ code: 1000, reason: 'console closed' });
    expect(client.received().toString()).toBe('bye');
  });

  it('delivers every byte a console sent before closing at once, then closes with 1000', async () => {
    const size = 4 * MiB;
    const data = patternBuffer(size);
    const upstream = await startUpstream((socket) => socket.end(data));
    for (let attempt = 0; attempt < 5; attempt += 1) {
      const checker = new PatternChecker();
      const client = await open(await issue({ port: upstream.port }), { keepMessages: false, onMessage: checker.check });
      const close = await client.waitForClose(10_000);
      expect({ attempt, bytes: client.receivedBytes, code: close.code, corruptAt: checker.corruptAt }).toEqual({
        attempt,
        bytes: size,
        code: 1000,
        corruptAt: undefined,
      });
    }
  });

  it('stops reading a console whose browser does not read (backpressure), and resumes when it reads again', async () => {
    const chunk = patternBuffer(251 * 256); // 64 256 bytes: the pattern continues across chunks
    const cap = 256 * MiB;
    let attempted = 0;
    let stop = false;
    let waitingForDrain = false;
    let upstreamSocket: Socket | undefined;
    const upstream = await startUpstream((socket) => {
      upstreamSocket = socket;
      const pump = (): void => {
        waitingForDrain = false;
        while (!stop && attempted < cap) {
          attempted += chunk.length;
          if (!socket.write(chunk)) {
            waitingForDrain = true;
            socket.once('drain', pump);
            return;
          }
        }
        socket.end();
      };
      pump();
    });

    const baseline = processMemory();
    const checker = new PatternChecker();
    const client = await open(await issue({ port: upstream.port }), { keepMessages: false, onMessage: checker.check });
    // The browser stops reading: nothing more leaves the kernel's receive buffer.
    (client.ws as any)._socket.pause();
    const pausedAt = Date.now();

    // Wait until the console is blocked: waiting for 'drain', and nothing written for 500 ms.
    let lastWritten = -1;
    let stableSince = Date.now();
    await waitUntil(
      () => {
        const written = upstreamSocket?.bytesWritten ?? 0;
        if (written !== lastWritten) {
          lastWritten = written;
          stableSince = Date.now();
        }
        return Date.now() - pausedAt >= 1_000 && Date.now() - stableSince >= 500 && waitingForDrain ? true : undefined;
      },
      15_000,
      'the console to be blocked by backpressure',
    );
    const blockedAt = attempted;
    expect(upstreamSocket!.bytesWritten).toBeLessThan(32 * MiB);
    expect(blockedAt).toBeLessThan(32 * MiB);
    expect(attempted).toBeLessThan(cap);
    // What the proxy holds for this session stays bounded too.
    expect(processMemory() - baseline).toBeLessThan(64 * MiB);

    // The browser reads again: the console is read again, well past where it was blocked.
    (client.ws as any)._socket.resume();
    await client.waitForBytes(blockedAt + 8 * MiB, 30_000);
    stop = true;
    const close = await client.waitForClose(30_000);
    expect(close.code).toBe(1000);
    expect(client.receivedBytes).toBe(attempted);
    expect(checker.corruptAt).toBeUndefined();
  });

  it('stops reading a browser whose console does not read (backpressure), and resumes when it reads again', async () => {
    let upstreamSocket: Socket | undefined;
    const upstream = await startUpstream((socket) => {
      upstreamSocket = socket;
      // The console reads nothing for now.
      socket.pause();
    });
    const baseline = processMemory();
    const client = await open(await issue({ port: upstream.port }));
    const consoleSide = await waitUntil(() => upstreamSocket, 5_000, 'the console connection');

    // A well-behaved browser: at most 16 messages (1 MiB) not yet handed to the network.
    const chunk = patternBuffer(251 * 256);
    const cap = 256 * MiB;
    let sent = 0;
    let stop = false;
    const inFlight = new Set<Promise<void>>();
    const pump = (async () => {
      while (!stop && sent < cap && client.isOpen) {
        if (inFlight.size >= 16) {
          await Promise.race(inFlight);
          continue;
        }
        sent += chunk.length;
        const sending: Promise<void> = client.send(chunk).finally(() => inFlight.delete(sending));
        inFlight.add(sending);
      }
      await Promise.allSettled(inFlight);
    })();

    let lastSent = -1;
    let stableSince = Date.now();
    const startedAt = Date.now();
    await waitUntil(
      () => {
        if (sent !== lastSent) {
          lastSent = sent;
          stableSince = Date.now();
        }
        return Date.now() - startedAt >= 1_000 && Date.now() - stableSince >= 500 ? true : undefined;
      },
      15_000,
      'the browser to be blocked by backpressure',
    );
    const blockedAt = sent;
    expect(blockedAt).toBeLessThan(32 * MiB);
    expect(processMemory() - baseline).toBeLessThan(64 * MiB);

    // The console reads again: everything the browser sent arrives, in order.
    const checker = new PatternChecker();
    consoleSide.on('data', checker.check);
    consoleSide.resume();
    await waitUntil(() => (checker.position >= blockedAt + 8 * MiB ? true : undefined), 30_000, 'the browser to be read again');
    stop = true;
    await withDeadline(pump, 10_000, 'the browser to stop sending');
    await waitUntil(() => (checker.position === sent ? true : undefined), 10_000, 'every byte to reach the console');
    expect(checker.corruptAt).toBeUndefined();
    await client.close();
  });

  it('closes with 1011 "console unreachable" when nothing listens on the console port', async () => {
    const token = await issue({ port: await freePort() });
    const client = await open(token);
    const close = await client.waitForClose();
    expect(close.code).toBe(1011);
    expect(close.reason).toMatch(/^console unreachable/);
    const row = await endedSession(token.id);
    expect(row.close_reason).toBe('console unreachable');
  });

  it('opens 20 browsers at once on a console that listens with a backlog of 1, as QEMU does, none waiting for a SYN retry', async () => {
    // Like QEMU's VNC server: a listen backlog of 1, and the RFB greeting the moment it accepts.
    const qemuLike = createServer((socket) => {
      socket.on('error', () => undefined);
      socket.write('RFB 003.008\n');
    });
    await new Promise<void>((resolve) => qemuLike.listen({ host: '127.0.0.1', port: 0, backlog: 1 }, resolve));
    const accepted: Socket[] = [];
    qemuLike.on('connection', (socket) => accepted.push(socket));
    try {
      const token = await issue({ port: (qemuLike.address() as { port: number }).port });
      const startedAt = Date.now();
      const clients = await Promise.all(Array.from({ length: 20 }, () => open(token)));
      const banners = await Promise.all(clients.map((client) => client.waitForBytes(12)));
      // A dropped SYN is sent again only after 1 s.
      expect(Date.now() - startedAt).toBeLessThan(950);
      expect(banners.map((banner) => banner.toString('latin1'))).toEqual(Array(20).fill('RFB 003.008\n'));
      expect(accepted).toHaveLength(20);
      await Promise.all(clients.map((client) => client.close()));
    } finally {
      for (const socket of accepted) {
        socket.destroy();
      }
      await new Promise((resolve) => qemuLike.close(resolve));
    }
  });

  describe('HTTP CONNECT (internal access path)', () => {
    it('sends CONNECT for the path and passes on the bytes that came with the 200 answer (Nova bug 1695844)', async () => {
      let requestHead = '';
      const upstream = await startUpstream((socket) => {
        let buffered = '';
        const onData = (data: Buffer) => {
          buffered += data.toString('latin1');
          const end = buffered.indexOf('\r\n\r\n');
          if (end === -1) {
            return;
          }
          socket.off('data', onData);
          requestHead = buffered.slice(0, end);
          // The answer and the console's banner in ONE write: one TCP segment.
          socket.write('HTTP/1.1 200 OK\r\n\r\nRFB 003.008\n');
          const rest = buffered.slice(end + 4);
          if (rest) {
            socket.write(Buffer.from(rest, 'latin1'));
          }
          socket.pipe(socket);
        };
        socket.on('data', onData);
      });
      const client = await open(await issue({ port: upstream.port, internalAccessPath: 'vm-42' }));
      const banner = await client.waitForBytes(12);
      expect(banner.toString('latin1')).toBe('RFB 003.008\n');
      expect(requestHead.split('\r\n')[0]).toBe('CONNECT vm-42 HTTP/1.1');
      // After the banner, the stream is the console's: nothing of the HTTP answer leaks through.
      expect((await client.roundTrip('after-connect')).toString()).toBe('after-connect');
      expect(client.received().toString('latin1')).toBe('RFB 003.008\nafter-connect');
      await client.close();
    });

    it('reads a CONNECT answer that arrives in pieces, with headers', async () => {
      const upstream = await startUpstream((socket) => {
        socket.once('data', () => {
          const pieces = ['HTTP/1.1 200 Connection established\r\n', 'Via: 1.1 test\r\n', '\r', '\nRFB 003.008\n'];
          const writeNext = (): void => {
            socket.write(pieces.shift()!);
            // Separate TCP segments: the proxy must reassemble the head.
            if (pieces.length > 0) {
              setTimeout(writeNext, 20);
            } else {
              socket.pipe(socket);
            }
          };
          writeNext();
        });
      });
      const client = await open(await issue({ port: upstream.port, internalAccessPath: 'vm-43' }));
      expect((await client.waitForBytes(12)).toString('latin1')).toBe('RFB 003.008\n');
      expect((await client.roundTrip('next')).toString()).toBe('next');
      expect(client.received().toString('latin1')).toBe('RFB 003.008\nnext');
      await client.close();
    });

    it('closes with 1011 when the CONNECT is answered with an error', async () => {
      const upstream = await startUpstream((socket) => {
        socket.once('data', () => socket.end('HTTP/1.1 500 Nope\r\n\r\n'));
      });
      const token = await issue({ port: upstream.port, internalAccessPath: 'vm-42' });
      const client = await open(token);
      const close = await client.waitForClose();
      expect(close.code).toBe(1011);
      expect(close.reason).toMatch(/^console unreachable/);
      expect(client.receivedBytes).toBe(0);
      expect((await endedSession(token.id)).close_reason).toBe('console unreachable');
    });
  });
});

describe('session records', () => {
  it('records a session the browser closed, with what went through', async () => {
    const token = await issue();
    const client = await open(token);
    const data = randomBytes(1000);
    expect((await client.roundTrip(data)).equals(data)).toBe(true);
    const beforeClose = Date.now();
    await client.close();

    const row = await endedSessionWithBytes(token.id, 1000, 1000);
    expect(row).toMatchObject({
      token_id: String(token.id),
      token_fingerprint: fingerprintOf(token.token),
      instance_uuid: token.instanceUuid,
      console_type: 'novnc',
      host: '127.0.0.1',
      port: echoUpstream.port,
      proxy_instance: MAIN_INSTANCE,
      client_address: '127.0.0.1',
      close_reason: 'client closed',
    });
    expect(row.started_at.getTime()).toBeLessThanOrEqual(row.ended_at!.getTime());
    expect(Math.abs(row.ended_at!.getTime() - beforeClose)).toBeLessThan(5_000);
  });

  it('ends a session at the close handshake, without waiting for the browser to close its side of the connection', async () => {
    const token = await issue();
    // A client that completes the close handshake but never sends its FIN: ws alone would hold
    // the connection (and the session) for its 30 s close timer.
    const socket = connectTcp({ host: '127.0.0.1', port: proxy.port, allowHalfOpen: true });
    socket.on('error', () => undefined);
    let received = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => (received = Buffer.concat([received, chunk])));
    const serverEnded = new Promise<void>((resolve) => socket.once('end', resolve));
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    socket.write(
      `GET /websockify?token=${encodeURIComponent(token.token)} HTTP/1.1\r\nHost: 127.0.0.1:${proxy.port}\r\n` +
        `Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\n\r\n`,
    );
    await waitUntil(() => (received.includes('\r\n\r\n') ? true : undefined), 5_000, 'the 101 answer');
    expect(received.toString('latin1')).toMatch(/^HTTP\/1\.1 101 /);
    await liveSession(token.id);
    // A masked close frame, code 1000 (a client's frames are masked; this mask is zero bytes).
    const closedAt = Date.now();
    socket.write(Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]));
    await withDeadline(serverEnded, 5_000, "the proxy's FIN");
    const row = await endedSession(token.id, 5_000);
    expect(row.close_reason).toBe('client closed');
    expect(row.ended_at!.getTime() - closedAt).toBeLessThan(5_000);
    // The proxy's close frame (1000) came before its FIN.
    expect([...received.subarray(received.length - 4)]).toEqual([0x88, 0x02, 0x03, 0xe8]);
    socket.destroy();
  });

  it('records a session the console closed, with the bytes of each direction', async () => {
    const upstream = await startUpstream((socket) => {
      let got = 0;
      socket.on('data', (data: Buffer) => {
        got += data.length;
        if (got >= 10) {
          socket.end(Buffer.alloc(20, 7));
        }
      });
    });
    const token = await issue({ port: upstream.port, consoleType: 'spice-html5' });
    const client = await open(token);
    await client.send(Buffer.alloc(10, 1));
    expect((await client.waitForClose()).code).toBe(1000);
    expect(client.receivedBytes).toBe(20);

    const row = await endedSessionWithBytes(token.id, 20, 10);
    expect(row).toMatchObject({
      console_type: 'spice-html5',
      close_reason: 'console closed',
      instance_uuid: token.instanceUuid,
      port: upstream.port,
    });
  });
});

describe('exclusive serial consoles (Nova bug 1425640)', () => {
  /** An echo console on a port of its own, and two serial tokens of one instance for that port. */
  async function twoSerialTokensForOnePort() {
    const upstream = await startUpstream(echo);
    const instanceUuid = randomUUID();
    const first = await issue({ consoleType: 'serial', port: upstream.port, instanceUuid });
    const second = await issue({ consoleType: 'serial', port: upstream.port, instanceUuid });
    return { upstream, instanceUuid, first, second };
  }

  it('refuses a second serial session on a port with 409 while the first is live, and accepts it once the first ends', async () => {
    const { upstream, instanceUuid, first, second } = await twoSerialTokensForOnePort();

    const firstClient = await open(first);
    expect((await firstClient.roundTrip('first')).toString()).toBe('first');
    const refused = await expectRefusedUpgrade(consoleUrl(proxy, second.token));
    expect(refused.status).toBe(409);
    expect(refused.body).toMatch(/console busy/);
    expect(refused.body).not.toContain(second.token);
    expect(upstream.connections).toHaveLength(1);

    // The API tells the agent that port is taken, and by which session.
    const holder = await liveSession(first.id);
    const ports = await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/instances/${instanceUuid}/serial-ports`, {
      key: deployment.agentKeys.cell1,
    });
    expect(ports.status).toBe(200);
    expect(ports.body.ports).toEqual([{ host: '127.0.0.1', port: upstream.port, free: false, sessionId: holder.id }]);

    // Once the first session has ended, the port is free again.
    await firstClient.close();
    await endedSession(first.id);
    const secondClient = await open(second);
    expect((await secondClient.roundTrip('second')).toString()).toBe('second');
    await secondClient.close();
  });

  it('does not refuse a browser that reconnects at once, while the end of its previous session is still being written', async () => {
    const { first, second } = await twoSerialTokensForOnePort();
    const firstClient = await open(first);
    const holder = await liveSession(first.id);

    // A busy database: the write that records the end of the first session has to wait (here, for
    // a row lock the test holds). Without it the same race shows about once in twenty reconnects.
    const locker = new Client({ connectionString: deployment.cellUrls.cell1, options: CELL_CONNECTION_OPTIONS });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('SELECT 1 FROM console_sessions WHERE id = $1 FOR UPDATE', [holder.id]);
      expect((await firstClient.close()).code).toBe(1000);
      await waitUntil(
        async () => {
          const waiting = await queryDatabase(
            deployment.cellUrls.cell1,
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%COALESCE(ended_at%'",
          );
          return waiting.length > 0 ? true : undefined;
        },
        3_000,
        'the end of the first session to be written',
      );
      // The browser has seen its session close and reconnects at once (noVNC and the serial page
      // do): it must not be told the console is busy with its own previous session.
      const attempt = open(second).then(
        (client) => ({ client, error: undefined }),
        (error: Error) => ({ client: undefined, error: error.message }),
      );
      await withDeadline(attempt, 500, 'the reconnection').catch(() => undefined);
      await locker.query('ROLLBACK');
      const outcome = await withDeadline(attempt, 5_000, 'the reconnection');
      expect(outcome.error).toBeUndefined();
      expect((await outcome.client!.roundTrip('again')).toString()).toBe('again');
      await outcome.client!.close();
    } finally {
      await locker.query('ROLLBACK').catch(() => undefined);
      await locker.end();
    }
  });

  it('does not make noVNC consoles exclusive', async () => {
    const upstream = await startUpstream(echo);
    const instanceUuid = randomUUID();
    const [a, b] = [await issue({ port: upstream.port, instanceUuid }), await issue({ port: upstream.port, instanceUuid })];
    const clientA = await open(a);
    const clientB = await open(b);
    expect((await clientA.roundTrip('a')).toString()).toBe('a');
    expect((await clientB.roundTrip('b')).toString()).toBe('b');
    await clientA.close();
    await clientB.close();
  });

  it('takes over a port whose session belonged to a proxy that stopped reporting (crashed), but not from a live one', async () => {
    const upstream = await startUpstream(echo);
    const insertHolder = async (lastSeen: string) => {
      const id = randomUUID();
      await queryDatabase(
        deployment.cellUrls.cell1,
        `INSERT INTO console_sessions (id, token_id, token_fingerprint, instance_uuid, console_type, host, port, proxy_instance, started_at, last_seen_at)
         VALUES ($1, NULL, 'aaaaaaaaaaaa', $2, 'serial', '127.0.0.1', $3, 'crashed-proxy', now() - interval '2 hours', ${lastSeen})`,
        [id, randomUUID(), upstream.port],
      );
      return id;
    };

    const stale = await insertHolder("now() - interval '1 hour'");
    const token = await issue({ consoleType: 'serial', port: upstream.port });
    const client = await open(token);
    expect((await client.roundTrip('taken over')).toString()).toBe('taken over');
    const [staleRow] = await queryDatabase<SessionRow>(deployment.cellUrls.cell1, 'SELECT * FROM console_sessions WHERE id = $1', [stale]);
    expect(staleRow.close_reason).toBe('proxy lost');
    expect(staleRow.ended_at).not.toBeNull();
    await client.close();
    await endedSession(token.id);

    const live = await insertHolder('now()');
    try {
      const refused = await expectRefusedUpgrade(consoleUrl(proxy, (await issue({ consoleType: 'serial', port: upstream.port })).token));
      expect(refused.status).toBe(409);
      expect(refused.body).toContain(live);
    } finally {
      await queryDatabase(
        deployment.cellUrls.cell1,
        "UPDATE console_sessions SET ended_at = now(), close_reason = 'test cleanup' WHERE id = $1",
        [live],
      );
    }
  });
});

describe('live revocation', () => {
  it('closes the session with 1008 "token revoked" within a second of revoking its token', async () => {
    const token = await issue();
    const client = await open(token);
    expect((await client.roundTrip('before')).toString()).toBe('before');

    const { response, revokedAt } = await revoke({ tokenId: token.id });
    expect(response.status).toBe(204);
    expectPolicyClose(await client.waitForClose(3_000), 'token revoked', { since: revokedAt, withinMs: 1_000 });
    expect((await endedSession(token.id)).close_reason).toBe('token revoked');
  });

  it('closes every session of an instance when its tokens are revoked, and only those', async () => {
    const instanceUuid = randomUUID();
    const [a, b] = [await issue({ instanceUuid }), await issue({ instanceUuid })];
    const other = await issue();
    const clients = [await open(a), await open(b)];
    const otherClient = await open(other);

    const { response, revokedAt } = await revoke({ instanceUuid });
    expect(response.status).toBe(200);
    expect(response.body.revoked).toBe(2);
    for (const client of clients) {
      expectPolicyClose(await client.waitForClose(3_000), 'token revoked', { since: revokedAt, withinMs: 1_000 });
    }
    // The same notification was handled: the other instance's session is still up.
    expect(otherClient.isOpen).toBe(true);
    expect((await otherClient.roundTrip('still here')).toString()).toBe('still here');
    await otherClient.close();
  });

  it('closes the sessions of every proxy replica of the cell', async () => {
    const second = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-second' });
    const instanceUuid = randomUUID();
    const [a, b] = [await issue({ instanceUuid }), await issue({ instanceUuid })];
    const onMain = await open(a);
    const onSecond = await open(b, { via: second });
    expect((await onSecond.roundTrip('second')).toString()).toBe('second');

    const { response, revokedAt } = await revoke({ instanceUuid });
    expect(response.body.revoked).toBe(2);
    const closes = await Promise.all([onMain.waitForClose(3_000), onSecond.waitForClose(3_000)]);
    for (const close of closes) {
      expectPolicyClose(close, 'token revoked', { since: revokedAt, withinMs: 1_000 });
    }
    const rowB = await endedSession(b.id);
    expect(rowB).toMatchObject({ proxy_instance: 'proxy-second', close_reason: 'token revoked' });
  });

  it('ends a session whose token was revoked while the proxy was reconnecting to the cell database', async () => {
    const token = await issue();
    const client = await open(token);
    expect((await client.roundTrip('before')).toString()).toBe('before');

    // The proxies' LISTEN connections drop (a failover, a restart): notifications sent meanwhile are lost.
    const cut = await queryDatabase<{ terminated: boolean }>(
      deployment.cellUrls.cell1,
      "SELECT pg_terminate_backend(pid) AS terminated FROM pg_stat_activity WHERE application_name = 'keyhole-proxy:cell1:events' AND datname = current_database()",
    );
    expect(cut.length).toBeGreaterThan(0);
    const { response, revokedAt } = await revoke({ tokenId: token.id });
    expect(response.status).toBe(204);

    expectPolicyClose(await client.waitForClose(5_000), 'token revoked', { since: revokedAt, withinMs: 2_000 });
    await waitUntil(
      async () => {
        const ready = await fetch(`${proxy.httpBase}/readyz`);
        return ready.status === 200 && ((await ready.json()) as { listening: boolean }).listening ? true : undefined;
      },
      5_000,
      'the proxy to listen again',
    );
  });

  it('ends a session whose token is revoked while the proxy is still connecting to the console', async () => {
    // A console behind CONNECT that answers only when the test says so.
    let answer: (() => void) | undefined;
    let connectReceived!: () => void;
    const received = new Promise<void>((resolve) => (connectReceived = resolve));
    const upstream = await startUpstream((socket) => {
      socket.once('data', () => {
        answer = () => {
          socket.write('HTTP/1.1 200 OK\r\n\r\nRFB 003.008\n');
          socket.pipe(socket);
        };
        connectReceived();
      });
    });
    const instanceUuid = randomUUID();
    const slow = await issue({ port: upstream.port, internalAccessPath: 'vm-slow', instanceUuid });
    // A live session of the same instance tells when the proxy has handled the revocation.
    const canary = await open(await issue({ instanceUuid }));
    // The upgrade is accepted before the console is reached.
    const connecting = await open(slow);
    await withDeadline(received, 5_000, 'the CONNECT request');

    const { response } = await revoke({ instanceUuid });
    expect(response.body.revoked).toBe(2);
    expect(await canary.waitForClose(3_000)).toMatchObject({ code: 1008, reason: 'token revoked' });

    // Only now does the console answer: the revoked token must not keep a live session.
    answer!();
    const close = await connecting.waitForClose(3_000);
    expect(close).toMatchObject({ code: 1008, reason: 'token revoked' });
    expect((await endedSession(slow.id)).close_reason).toBe('token revoked');
  });
});

describe('ending a session by operator', () => {
  it('lists live sessions and ends one with 1008 "ended by operator" (DELETE /v1/cells/{cell}/sessions/{id})', async () => {
    const token = await issue();
    const client = await open(token);
    expect((await client.roundTrip(Buffer.alloc(100, 3))).length).toBe(100);

    const listed = await waitUntil(
      async () => {
        const response = await call(deployment.api.baseUrl, 'GET', '/v1/cells/cell1/sessions?live=true', { key: deployment.operatorKey });
        expect(response.status).toBe(200);
        return (response.body.sessions as { id: string; tokenId: number }[]).find((session) => session.tokenId === token.id);
      },
      5_000,
      'the session to be listed',
    );
    expect(listed).toMatchObject({
      tokenId: token.id,
      fingerprint: fingerprintOf(token.token),
      instanceUuid: token.instanceUuid,
      consoleType: 'novnc',
      proxyInstance: MAIN_INSTANCE,
      route: null,
      endedAt: null,
      closeReason: null,
    });

    // Agents do not end sessions; the session is untouched.
    const forbidden = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/sessions/${listed.id}`, {
      key: deployment.agentKeys.cell1,
    });
    expect(forbidden.status).toBe(403);
    expect(client.isOpen).toBe(true);

    const endedAt = Date.now();
    const response = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/sessions/${listed.id}`, { key: deployment.operatorKey });
    expect(response.status).toBe(204);
    expectPolicyClose(await client.waitForClose(3_000), 'ended by operator', { since: endedAt, withinMs: 1_000 });

    const row = await endedSessionWithBytes(token.id, 100, 100);
    expect(row.close_reason).toBe('ended by operator');
    const again = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/sessions/${listed.id}`, { key: deployment.operatorKey });
    expect(again.status).toBe(404);
    const live = await call(deployment.api.baseUrl, 'GET', '/v1/cells/cell1/sessions?live=true', { key: deployment.operatorKey });
    expect((live.body.sessions as { id: string }[]).map((session) => session.id)).not.toContain(listed.id);
  });
});

describe('session limits', () => {
  let idleProxy: RunningProxy;
  let lengthProxy: RunningProxy;
  let expiryProxy: RunningProxy;
  let frameProxy: RunningProxy;

  beforeAll(async () => {
    idleProxy = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-idle', KEYHOLE_PROXY_IDLE_TIMEOUT_MS: '1500' });
    lengthProxy = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-length', KEYHOLE_PROXY_MAX_SESSION_MS: '1500' });
    expiryProxy = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-expiry', KEYHOLE_PROXY_ENFORCE_TOKEN_EXPIRY: 'true' });
    frameProxy = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-frame', KEYHOLE_PROXY_MAX_FRAME_BYTES: '2048' });
  });

  it('closes an idle session with 1008 "idle timeout"', async () => {
    const token = await issue();
    const client = await open(token, { via: idleProxy });
    const openedAt = Date.now();
    expectPolicyClose(await client.waitForClose(5_000), 'idle timeout', { since: openedAt, atLeastMs: 1_400, withinMs: 3_500 });
    expect((await endedSession(token.id)).close_reason).toBe('idle timeout');
  });

  it('closes a busy session at the maximum session length with 1008 "session time limit"', async () => {
    const KEYSTROKES = Buffer.alloc(4_096, 'k');
    const token = await issue();
    const client = await open(token, { via: lengthProxy });
    const openedAt = Date.now();
    // Busy: a round trip every 100 ms, and keystrokes in between that are still on their way
    // when the proxy closes (their console is gone by then: the close must not wait for them).
    while (client.isOpen && Date.now() - openedAt < 5_000) {
      await client.roundTrip('tick').catch(() => undefined);
      for (let keystroke = 0; keystroke < 100 && client.isOpen; keystroke += 1) {
        void client.send(KEYSTROKES).catch(() => undefined);
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
    expectPolicyClose(await client.waitForClose(1_000), 'session time limit', { since: openedAt, atLeastMs: 1_400, withinMs: 3_500 });
    expect((await endedSession(token.id)).close_reason).toBe('session time limit');
  });

  it('closes a session when its token expires, when configured to', async () => {
    const token = await issue({ ttlSeconds: 2 });
    const issuedAt = Date.now();
    const longLived = await issue();
    const client = await open(token, { via: expiryProxy });
    const survivor = await open(longLived, { via: expiryProxy });
    expectPolicyClose(await client.waitForClose(5_000), 'token expired', { since: issuedAt, withinMs: 4_000 });
    expect((await endedSession(token.id)).close_reason).toBe('token expired');
    // A session whose token is still valid is not touched.
    expect((await survivor.roundTrip('valid')).toString()).toBe('valid');
    await survivor.close();
  });

  it('closes with 1009 when the browser sends a message larger than the maximum frame size', async () => {
    const token = await issue();
    const client = await open(token, { via: frameProxy });
    expect((await client.roundTrip(Buffer.alloc(2048, 9))).length).toBe(2048);
    await client.send(Buffer.alloc(4096, 9)).catch(() => undefined);
    const close = await client.waitForClose();
    expect(close.code).toBe(1009);
    expect((await endedSession(token.id)).close_reason).toBe('frame too large');
  });
});

describe('heartbeat', () => {
  let heartbeatProxy: RunningProxy;

  beforeAll(async () => {
    heartbeatProxy = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-heartbeat', KEYHOLE_PROXY_HEARTBEAT_INTERVAL_MS: '1000' });
  });

  it('drops a browser that answers no ping', async () => {
    const token = await issue();
    const client = await open(token, { via: heartbeatProxy, autoPong: false });
    const openedAt = Date.now();
    const close = await client.waitForClose(5_000);
    // Dropped without a closing handshake.
    expect(close.code).toBe(1006);
    expect(close.atMs - openedAt).toBeLessThan(3_500);
    expect((await endedSession(token.id)).close_reason).toBe('heartbeat timeout');
  });

  it('keeps a browser that answers pings through several intervals', async () => {
    const client = await open(await issue(), { via: heartbeatProxy });
    let pings = 0;
    const thirdPing = withDeadline(
      new Promise<void>((resolve) =>
        client.ws.on('ping', () => {
          pings += 1;
          if (pings === 3) {
            resolve();
          }
        }),
      ),
      6_000,
      'three pings',
    );
    await thirdPing;
    expect(client.isOpen).toBe(true);
    expect((await client.roundTrip('alive')).toString()).toBe('alive');
    await client.close();
  });
});

describe('connection limits', () => {
  /** Opens a raw TCP connection to a proxy and collects what it answers until it closes. */
  async function rawClient(
    via: RunningProxy,
    localAddress?: string,
  ): Promise<{ socket: Socket; answer: Promise<{ text: string; closedAtMs: number }> }> {
    const socket = connectTcp({ host: '127.0.0.1', port: via.port, localAddress });
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    const answer = new Promise<{ text: string; closedAtMs: number }>((resolve) => {
      let text = '';
      socket.on('data', (data: Buffer) => (text += data.toString('latin1')));
      socket.on('close', () => resolve({ text, closedAtMs: Date.now() }));
    });
    return { socket, answer };
  }

  it('closes a client that never finishes its upgrade headers within KEYHOLE_PROXY_HEADERS_TIMEOUT_MS (slowloris)', async () => {
    const bounded = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-headers-bound', KEYHOLE_PROXY_HEADERS_TIMEOUT_MS: '1000' });
    const token = await issue();
    // A session that was opened in time is not touched by the bound, however long it lasts.
    const client = await open(token, { via: bounded });

    const connectedAt = Date.now();
    const slow = await rawClient(bounded);
    const silent = await rawClient(bounded);
    slow.socket.write(`GET /websockify?token=${token.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n`);
    // One more header line every 200 ms, never the blank line that ends the head.
    let line = 0;
    const drip = setInterval(() => slow.socket.writable && slow.socket.write(`X-Drip-${(line += 1)}: x\r\n`), 200);
    try {
      for (const [name, { answer }] of [
        ['dripping headers', slow],
        ['silent', silent],
      ] as const) {
        const { text, closedAtMs } = await withDeadline(answer, 5_000, `the ${name} client to be closed`);
        expect({ name, text: text.split('\r\n')[0] }).toEqual({ name, text: 'HTTP/1.1 408 Request Timeout' });
        // The fixed JSON error of every plain-HTTP answer (found by console-proxy-fuzz: it had no body).
        expect(text).toMatch(/\r\nContent-Type: application\/json/i);
        expect(text).toMatch(/\r\nX-Content-Type-Options: nosniff/i);
        expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toEqual({ code: 'REQUEST_TIMEOUT', message: expect.any(String) });
        expect(closedAtMs - connectedAt).toBeGreaterThanOrEqual(900);
        expect(closedAtMs - connectedAt).toBeLessThan(2_500);
      }
    } finally {
      clearInterval(drip);
    }
    expect(line).toBeGreaterThanOrEqual(3);

    expect(client.isOpen).toBe(true);
    expect((await client.roundTrip('after the bound')).toString()).toBe('after the bound');
    // A client that sends its head in time is served as always.
    const second = await open(await issue(), { via: bounded });
    expect((await second.roundTrip('in time')).toString()).toBe('in time');
    await second.close();
    await client.close();
  });

  /** The head of a request that never ends (no blank line): the connection stays unauthenticated. */
  const UNFINISHED_HEAD = 'GET /websockify HTTP/1.1\r\nHost: 127.0.0.1\r\n';

  /** Splits a raw answer into its status line, its headers (lowercase names) and its JSON body. */
  function parseAnswer(text: string): { status: string; headers: Record<string, string>; body: unknown } {
    const [head, body] = text.split('\r\n\r\n');
    const [status, ...lines] = head.split('\r\n');
    const headers = Object.fromEntries(
      lines.map((line) => [line.slice(0, line.indexOf(':')).toLowerCase(), line.slice(line.indexOf(':') + 1).trim()]),
    );
    return { status, headers, body: JSON.parse(body) as unknown };
  }

  /** A session can be opened again (the caps release as the server sees the idle sockets close). */
  function openOnceReleased(via: RunningProxy): Promise<ConsoleClient> {
    return waitUntil(async () => open(await issue(), { via }), 3_000, 'a new session to be accepted again', { retryErrors: true });
  }

  it('refuses a connection over KEYHOLE_PROXY_MAX_PENDING_PER_ADDRESS at once with 429, while granted sessions and other addresses go on', async () => {
    const capped = await startProxy({
      KEYHOLE_PROXY_INSTANCE: 'proxy-pending-per-address',
      KEYHOLE_PROXY_MAX_PENDING_PER_ADDRESS: '3',
      KEYHOLE_PROXY_HEADERS_TIMEOUT_MS: '20000',
    });
    // A granted session does not count against the cap.
    const client = await open(await issue(), { via: capped });
    const idle = [];
    for (let index = 0; index < 3; index += 1) {
      const raw = await rawClient(capped);
      raw.socket.write(UNFINISHED_HEAD);
      idle.push(raw);
    }

    const connectedAt = Date.now();
    const over = await rawClient(capped);
    over.socket.write(UNFINISHED_HEAD);
    const { text, closedAtMs } = await withDeadline(over.answer, 2_000, 'the connection over the cap to be refused');
    expect(closedAtMs - connectedAt).toBeLessThan(1_000);
    const answer = parseAnswer(text);
    expect(answer.status).toBe('HTTP/1.1 429 Too Many Requests');
    expect(answer.headers['retry-after']).toBe('1');
    expect(answer.headers['cache-control']).toBe('no-store');
    expect(answer.body).toEqual({ code: 'TOO_MANY_CONNECTIONS', message: 'too many pending connections from this address' });

    // Another peer address has a cap of its own.
    const other = await rawClient(capped, '127.0.0.2');
    other.socket.write('GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
    const otherAnswer = await withDeadline(other.answer, 5_000, 'the other address to be answered');
    expect(otherAnswer.text.split('\r\n')[0]).toBe('HTTP/1.1 200 OK');

    // The idle connections are still open, and the granted session still works.
    for (const { socket } of idle) {
      expect(socket.destroyed).toBe(false);
    }
    expect((await client.roundTrip('still here')).toString()).toBe('still here');

    // Once the idle connections go, the address is served again.
    for (const { socket } of idle) {
      socket.destroy();
    }
    const second = await openOnceReleased(capped);
    expect((await second.roundTrip('again')).toString()).toBe('again');
    await second.close();
    await client.close();
    const metrics = await scrapeMetrics(capped.httpBase);
    expect(metricValue(metrics, 'keyhole_proxy_connections_refused_total', { reason: 'per_address' })).toBe(1);
  });

  it('refuses a connection over KEYHOLE_PROXY_MAX_PENDING at once with 503', async () => {
    const capped = await startProxy({
      KEYHOLE_PROXY_INSTANCE: 'proxy-pending-total',
      KEYHOLE_PROXY_MAX_PENDING: '2',
      KEYHOLE_PROXY_HEADERS_TIMEOUT_MS: '20000',
    });
    const client = await open(await issue(), { via: capped });
    const idle = [await rawClient(capped), await rawClient(capped, '127.0.0.2')];
    for (const { socket } of idle) {
      socket.write(UNFINISHED_HEAD);
    }

    const connectedAt = Date.now();
    const over = await rawClient(capped, '127.0.0.3');
    const { text, closedAtMs } = await withDeadline(over.answer, 2_000, 'the connection over the total cap to be refused');
    expect(closedAtMs - connectedAt).toBeLessThan(1_000);
    const answer = parseAnswer(text);
    expect(answer.status).toBe('HTTP/1.1 503 Service Unavailable');
    expect(answer.headers['retry-after']).toBe('1');
    expect(answer.body).toEqual({ code: 'TOO_MANY_CONNECTIONS', message: 'too many pending connections' });
    expect((await client.roundTrip('still here')).toString()).toBe('still here');

    for (const { socket } of idle) {
      socket.destroy();
    }
    const second = await openOnceReleased(capped);
    await second.close();
    await client.close();
    const metrics = await scrapeMetrics(capped.httpBase);
    expect(metricValue(metrics, 'keyhole_proxy_connections_refused_total', { reason: 'total' })).toBe(1);
  });
});

describe('graceful shutdown', () => {
  it('on SIGTERM answers new upgrades 503 until the listener closes, lets live sessions run for the grace period, then closes them with 1001', async () => {
    const draining = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-draining', KEYHOLE_PROXY_DRAIN_GRACE_MS: '1500' });
    const token = await issue();
    const client = await open(token, { via: draining });
    expect((await client.roundTrip('before')).toString()).toBe('before');
    // A connection already open, mid-request, when the signal comes (a keep-alive client).
    const pending = connectTcp({ host: '127.0.0.1', port: draining.port });
    pending.on('error', () => undefined);
    await once(pending, 'connect');
    const late = await issue();
    pending.write(`GET /websockify?token=${late.token} HTTP/1.1\r\nHost: 127.0.0.1\r\n`);

    const signalledAt = Date.now();
    const shutdown = closeProxyOnSignal(draining, 'SIGTERM');
    await waitUntil(() => (draining.logs().includes('draining console sessions') ? true : undefined), 3_000, 'the drain to start');

    // A new connection is still accepted, and its upgrade gets a clear 503 (not a refused connect)...
    const refusal = await expectRefusedUpgrade(consoleUrl(draining, (await issue()).token));
    expect(refusal.status).toBe(503);
    expect(refusal.body).toContain('proxy is shutting down');
    // ...and so does an upgrade on a connection opened before the signal.
    const answer = new Promise<string>((resolve) => {
      let text = '';
      pending.on('data', (data: Buffer) => (text += data.toString('latin1')));
      pending.on('close', () => resolve(text));
    });
    pending.end(
      'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
    );
    expect(await withDeadline(answer, 3_000, 'the refusal')).toMatch(/^HTTP\/1\.1 503 /);

    // The live session still works during the grace period.
    expect((await client.roundTrip('during grace')).toString()).toBe('during grace');
    expect(Date.now() - signalledAt).toBeLessThan(1_500);

    const close = await client.waitForClose(5_000);
    expect(close).toMatchObject({ code: 1001, reason: 'proxy shutdown' });
    expect(close.atMs - signalledAt).toBeGreaterThanOrEqual(1_400);
    await withDeadline(shutdown, 10_000, 'the proxy to shut down');
    // Once drained, the listener is closed.
    expect((await expectUpgradeError(consoleUrl(draining, (await issue()).token))).code).toBe('ECONNREFUSED');
    expect((await endedSession(token.id)).close_reason).toBe('proxy shutdown');
    expect(await sessionRows(late.id)).toEqual([]);
  });
});

describe('operations endpoints', () => {
  it('exposes metrics that count what happened, without tokens or fingerprints', async () => {
    const measured = await startProxy({ KEYHOLE_PROXY_INSTANCE: 'proxy-metrics' });
    const [a, b] = [await issue(), await issue()];
    const clientA = await open(a, { via: measured });
    expect((await clientA.roundTrip(Buffer.alloc(100, 1))).length).toBe(100);
    await clientA.close();
    const clientB = await open(b, { via: measured });
    const unknown = randomBytes(32).toString('base64url');
    expect((await expectRefusedUpgrade(consoleUrl(measured, unknown))).status).toBe(401);
    expect((await expectRefusedUpgrade(`${measured.wsBase}/websockify`)).status).toBe(401);
    await endedSessionWithBytes(a.id, 100, 100);

    const response = await fetch(`${measured.httpBase}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await response.text();
    const value = (name: string, labels: Record<string, string> = {}) => metricValue(text, name, labels);
    expect(value('keyhole_proxy_sessions_live', { cell: 'cell1' })).toBe(1);
    expect(value('keyhole_proxy_connects_total', { result: 'accepted' })).toBe(2);
    expect(value('keyhole_proxy_connects_total', { result: 'invalid_token' })).toBe(1);
    expect(value('keyhole_proxy_connects_total', { result: 'no_token' })).toBe(1);
    expect(value('keyhole_proxy_bytes_total', { direction: 'to_client' })).toBe(100);
    expect(value('keyhole_proxy_bytes_total', { direction: 'to_console' })).toBe(100);
    expect(value('keyhole_proxy_connect_seconds_count')).toBe(2);
    expect(value('keyhole_proxy_connect_seconds_bucket', { le: '+Inf' })).toBe(2);
    for (const secret of [a.token, b.token, unknown]) {
      expect(text).not.toContain(secret);
      expect(text).not.toContain(fingerprintOf(secret));
    }
    expect(text).not.toContain(a.instanceUuid);
    await clientB.close();
  });

  it('answers /readyz with 200 while listening for revocations, and /healthz with 200', async () => {
    const ready = await fetch(`${proxy.httpBase}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ status: 'ready', cell: 'cell1', cellDatabase: true, listening: true });
    const health = await fetch(`${proxy.httpBase}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: 'ok' });
  });
});

describe('logs', () => {
  it('log one "console session ended" line per session, with its facts, and never a token or a request URL', async () => {
    // Every session has ended by now (clients are terminated after each test). Rows inserted by
    // the test itself (a crashed proxy's) have no log line.
    const rows = await waitUntil(
      async () => {
        const all = await queryDatabase<SessionRow>(
          deployment.cellUrls.cell1,
          "SELECT * FROM console_sessions WHERE proxy_instance <> 'crashed-proxy'",
        );
        return all.every((row) => row.ended_at !== null) ? all : undefined;
      },
      5_000,
      'every session to end',
    );
    expect(rows.length).toBeGreaterThan(20);

    // Nest's Logger is process-wide, so a line may land in the capture of another in-process
    // proxy than the one that wrote it: read them all.
    const lines = proxies.flatMap((running) => running.logs().split('\n').filter(Boolean));
    const ended = lines.map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => entry.msg === 'console session ended');
    expect(ended.map((entry) => entry.sessionId as string).sort()).toEqual(rows.map((row) => row.id).sort());
    for (const entry of ended) {
      const row = rows.find((candidate) => candidate.id === entry.sessionId)!;
      expect(entry).toMatchObject({
        fingerprint: row.token_fingerprint,
        instance: row.instance_uuid,
        consoleType: row.console_type,
        reason: row.close_reason,
      });
      expect(entry.fingerprint).toMatch(/^[0-9a-f]{12}$/);
      expect(entry).toEqual(
        expect.objectContaining({ bytesToClient: expect.any(Number), bytesToConsole: expect.any(Number), durationMs: expect.any(Number) }),
      );
      // The byte counts logged are the ones recorded (the operator's end keeps its reason only).
      expect([entry.bytesToClient, entry.bytesToConsole]).toEqual([Number(row.bytes_to_client), Number(row.bytes_to_upstream)]);
    }

    const everything = lines.join('\n');
    for (const token of issuedTokens) {
      expect(everything).not.toContain(token);
    }
    expect(everything).not.toContain('token=');
    expect(everything).not.toContain('/websockify');
  });
});
