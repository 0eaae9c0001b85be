import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { createConnection, createServer, Server, Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  connectorDialer,
  ConnectorMetrics,
  ExposeConnector,
  parseTproxyFile,
  selectTproxyEntries,
  listConnectors,
  ServeConnector,
  ServeConnectorOptions,
  StatusFile,
  TproxyFileError,
} from '@keyhole/connector';
import { connectUpstream, UpstreamError } from '@keyhole/upstream';
import { captureLogs } from '../support/log-capture';
import { closeSocket, freePort } from '../support/real/network';
import { startProcess } from '../support/real/processes';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { waitUntil, withDeadline } from '../support/wait';

/*
 * The connector with real sockets: `serve` on a UNIX socket in a temporary directory, TCP consoles
 * on 127.0.0.1, the proxy's dialer, and `expose` in front of it. Namespaces are the e2e tests' part
 * (routes-connector, connector-tproxy); here every byte and every refusal is checked.
 */

jest.setTimeout(60_000);

const HEADER_TIMEOUT_MS = 400;

let dir: string;
let socketPath: string;
let routesFile: string;
let logs: ReturnType<typeof captureLogs>;
let metrics: ConnectorMetrics;
let connector: ServeConnector;
let allowed: TcpUpstream;
/** Listens, but no route of the connector allows it. */
let forbidden: TcpUpstream;
const openSockets: Socket[] = [];

function routesFor(...ports: number[]): string {
  return [
    'routes:',
    ...ports.map((port, index) => `  - name: r${index}\n    match: { cidr: 127.0.0.0/8, ports: "${port}" }\n    via: direct`),
    '',
  ].join('\n');
}

const header = (destination: string, version = 1) =>
  Buffer.concat([Buffer.from('KHC'), Buffer.from([version, destination.length]), Buffer.from(destination, 'latin1')]);

/** Connects to the connector's socket (kept for cleanup). */
function connectUnix(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ path: socketPath, allowHalfOpen: true });
    openSockets.push(socket);
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

/** Sends `bytes` raw and resolves with everything the connector answered until it closed. */
async function rawExchange(bytes: Buffer, endAfter = true): Promise<Buffer> {
  const socket = await connectUnix();
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  // The connector half-closes after its answer; a client that did not end yet does so then.
  socket.once('end', () => socket.end());
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  socket.on('error', () => undefined);
  if (bytes.length > 0) {
    socket.write(bytes);
  }
  if (endAfter) {
    socket.end();
  }
  await withDeadline(closed, 10_000, 'the connector to close the connection');
  return Buffer.concat(chunks);
}

/** The parsed log lines with this message. */
function logged(message: string): Record<string, unknown>[] {
  return logs.lines.map((line) => JSON.parse(line) as Record<string, unknown>).filter((line) => line.msg === message);
}

async function metricValue(name: string, labels: Record<string, string>): Promise<number> {
  const metric = (await metrics.registry.getMetricsAsJSON()).find((candidate) => candidate.name === name);
  const value = metric?.values.find((sample) => Object.entries(labels).every(([key, expected]) => sample.labels[key] === expected));
  return value?.value ?? 0;
}

const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Reads from `socket` until it ends; resolves with every byte. */
function readAll(socket: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  return new Promise((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('end', () => resolve(Buffer.concat(chunks)));
    socket.once('error', reject);
    socket.resume();
  });
}

async function dialThroughConnector(port: number, host = '127.0.0.1'): Promise<Socket> {
  const socket = (await connectorDialer(socketPath)({ host, port }, 10_000)) as Socket;
  openSockets.push(socket);
  return socket;
}

/** Another serve connector on `socket` with the same routes and log (not started). */
function anotherConnector(name: string, socket: string, options: Partial<ServeConnectorOptions> = {}): ServeConnector {
  return new ServeConnector({
    name,
    socketPath: socket,
    routesFile,
    logger: logs.pino,
    metrics: new ConnectorMetrics(name, 'serve'),
    ...options,
  });
}

/** Runs `body` while the connector's routes also allow `port`, then restores them. */
async function whileAllowing<T>(port: number, body: () => Promise<T>): Promise<T> {
  await writeFile(routesFile, routesFor(allowed.port, port));
  expect(await connector.reloadRoutes()).toBe(true);
  try {
    return await body();
  } finally {
    await writeFile(routesFile, routesFor(allowed.port));
    await connector.reloadRoutes();
  }
}

/** The first chunk `socket` delivers once read. */
function firstChunk(socket: Socket): Promise<Buffer> {
  return new Promise((resolve) => {
    socket.once('data', resolve);
    socket.resume();
  });
}

/** A UNIX socket server playing a connector (a scripted peer for the dialer); `close` ends its connections too. */
async function startUnixServer(
  file: string,
  onConnection: (socket: Socket) => void = () => undefined,
): Promise<{ close: () => Promise<void> }> {
  const accepted: Socket[] = [];
  const server: Server = createServer((socket) => {
    accepted.push(socket);
    onConnection(socket);
  });
  await new Promise<void>((resolve) => server.listen(file, resolve));
  return {
    close: async () => {
      accepted.forEach((socket) => socket.destroy());
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'keyhole-connector-'));
  socketPath = path.join(dir, 'mgmt.sock');
  routesFile = path.join(dir, 'routes.yaml');
  allowed = await startTcpUpstream(echo);
  forbidden = await startTcpUpstream(echo);
  await writeFile(routesFile, routesFor(allowed.port));
  logs = captureLogs('keyhole-connector-test');
  metrics = new ConnectorMetrics('test', 'serve');
  connector = new ServeConnector({
    name: 'test',
    socketPath,
    routesFile,
    logger: logs.pino,
    metrics,
    headerTimeoutMs: HEADER_TIMEOUT_MS,
    connectTimeoutMs: 5_000,
  });
  await connector.start();
});

afterEach(async () => {
  for (const socket of openSockets.splice(0)) {
    socket.destroy();
  }
});

afterAll(async () => {
  await connector?.stop(0);
  await allowed?.close();
  await forbidden?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('connector serve', () => {
  it('listens on a socket of mode 0660 and logs where, and how many routes it allows', async () => {
    const info = await stat(socketPath);
    expect(info.isSocket()).toBe(true);
    expect(info.mode & 0o777).toBe(0o660);
    expect(logged('connector listening')).toEqual([expect.objectContaining({ socket: socketPath, routes: 1, connector: 'test' })]);
  });

  it.each([
    ['wrong magic', 4, Buffer.from('GET / HTTP/1.1\r\n\r\n'), 'bad magic'],
    ['an unknown version', 5, header('127.0.0.1:1', 2), 'version 2'],
    ['an empty destination', 4, header(''), 'empty destination'],
    ['a destination without a port', 4, header('127.0.0.1'), 'bad destination'],
    ['port 0', 4, header('127.0.0.1:0'), 'bad destination'],
    ['a port above 65535', 4, header('127.0.0.1:65536'), 'bad destination'],
    ['an IPv6 address without brackets', 4, header('::1:5900'), 'bad destination'],
    ['a host name that is none', 4, header('bad_host!:5900'), 'bad destination'],
    ['a control character', 4, header('127.0.0.1:59\n0'), 'bad destination'],
    ['a header that ends early', 4, header('127.0.0.1:5900').subarray(0, 9), 'header incomplete (9 bytes)'],
  ])('refuses %s with status %i and a log line', async (_case, status, bytes, reason) => {
    const result = status === 5 ? 'unsupported_version' : 'malformed';
    const before = await metricValue('keyhole_connector_connections_total', { result });
    const answer = await rawExchange(bytes);
    expect([...answer]).toEqual([status]);
    expect(logged('connection refused').at(-1)).toMatchObject({
      reason,
      result: status === 5 ? 'unsupported version' : 'malformed',
      level: 'warn',
    });
    expect(await metricValue('keyhole_connector_connections_total', { result })).toBe(before + 1);
  });

  it('refuses a header that is not complete within the header timeout, and never reads past 260 bytes of one', async () => {
    const started = Date.now();
    // Keeps the connection open: only the timeout ends it.
    const answer = await rawExchange(header('127.0.0.1:5900').subarray(0, 7), false);
    expect([...answer]).toEqual([4]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(HEADER_TIMEOUT_MS - 50);
    expect(logged('connection refused').at(-1)).toMatchObject({ reason: `header not complete within ${HEADER_TIMEOUT_MS} ms` });

    // 64 KiB of 'K': the magic fails at the second byte, whatever follows.
    expect([...(await rawExchange(Buffer.alloc(65536, 'K')))]).toEqual([4]);
  });

  it('refuses a destination its own routes do not allow, without dialling it, and logs the destination', async () => {
    const before = forbidden.connections.length;
    const answer = await rawExchange(header(`127.0.0.1:${forbidden.port}`));
    expect([...answer]).toEqual([1]);
    expect(forbidden.connections.length).toBe(before);
    expect(logged('connection refused').at(-1)).toMatchObject({
      destination: `127.0.0.1:${forbidden.port}`,
      result: 'not allowed',
      reason: 'no route of the connector allows it',
    });
    await expect(dialThroughConnector(forbidden.port)).rejects.toMatchObject({ reason: 'connector refused: not allowed' });
  });

  it('answers connect failed for an allowed destination where nothing listens', async () => {
    const closedPort = await freePort();
    await whileAllowing(closedPort, async () => {
      await expect(dialThroughConnector(closedPort)).rejects.toMatchObject({ reason: 'connector refused: connect failed' });
      expect(logged('connection refused').at(-1)).toMatchObject({ destination: `127.0.0.1:${closedPort}`, result: 'connect failed' });
    });
  });

  it('keeps its routes when a reloaded file is bad, and refuses one that is not all direct', async () => {
    await writeFile(routesFile, routesFor(allowed.port).replace('via: direct', 'via: { connector: /run/other.sock }'));
    expect(await connector.reloadRoutes()).toBe(false);
    expect(logged('routes file refused: the previous routes stay in use').at(-1)).toMatchObject({
      problems: [expect.stringContaining('a connector dials directly only')],
    });
    const socket = await dialThroughConnector(allowed.port);
    socket.write('still allowed');
    await waitUntil(() => (allowed.connections.length > 0 ? true : undefined));
    await writeFile(routesFile, routesFor(allowed.port));
    expect(await connector.reloadRoutes()).toBe(true);
  });

  it('carries 24 MiB each way byte-exact, and logs the destination and byte counts', async () => {
    const data = randomBytes(24 * 1024 * 1024);
    const socket = await dialThroughConnector(allowed.port);
    const received = readAll(socket);
    socket.end(data);
    const back = await withDeadline(received, 40_000, '24 MiB back through the connector');
    expect(back.length).toBe(data.length);
    expect(sha256(back)).toBe(sha256(data));
    await waitUntil(
      () => logged('connection closed').find((line) => line.bytesToDestination === data.length),
      10_000,
      'the close log line',
    );
    expect(logged('connection closed').at(-1)).toMatchObject({
      destination: `127.0.0.1:${allowed.port}`,
      route: 'r0',
      result: 'ok',
      bytesToDestination: data.length,
      bytesFromDestination: data.length,
    });
  });

  it('passes half-closes both ways: the console ends first and still receives; the client ends first and still receives', async () => {
    const halfOpen = await startTcpUpstream((socket) => socket.end('banner then end'), { allowHalfOpen: true });
    try {
      await whileAllowing(halfOpen.port, async () => {
        const consoleReceived = halfOpen.nextConnection().then((server) => readAll(server));
        const client = await dialThroughConnector(halfOpen.port);
        const fromConsole = await withDeadline(readAll(client), 10_000, 'the console to end its side');
        expect(fromConsole.toString()).toBe('banner then end');
        // The console's side is closed; the client's still carries bytes to it.
        client.end('sent after the console ended');
        expect((await withDeadline(consoleReceived, 10_000, 'the client bytes')).toString()).toBe('sent after the console ended');
      });
    } finally {
      await halfOpen.close();
    }

    // The other way: the client ends, then the console answers in full.
    const answerAfterEnd = await startTcpUpstream(
      (socket) => void readAll(socket).then((request) => socket.end(Buffer.concat([Buffer.from('got '), request]))),
      { allowHalfOpen: true },
    );
    try {
      await whileAllowing(answerAfterEnd.port, async () => {
        const client = await dialThroughConnector(answerAfterEnd.port);
        const answer = readAll(client);
        client.end('request');
        expect((await withDeadline(answer, 10_000, 'the answer after a half-close')).toString()).toBe('got request');
      });
    } finally {
      await answerAfterEnd.close();
    }
  });

  it('keeps console bytes that arrive with the status', async () => {
    // A connector that answers ok and the console's first bytes in one write (as a fast console's
    // banner can arrive): the dialer must hand them on.
    const scripted = path.join(dir, 'scripted.sock');
    const server = await startUnixServer(scripted, (socket) => {
      socket.once('data', () => socket.write(Buffer.concat([Buffer.from([0]), Buffer.from('RFB 003.008\n')])));
    });
    try {
      const socket = (await connectorDialer(scripted)({ host: '127.0.0.1', port: 5900 }, 5_000)) as Socket;
      openSockets.push(socket);
      expect((await firstChunk(socket)).toString()).toBe('RFB 003.008\n');
    } finally {
      await server.close();
    }
  });

  it("speaks HTTP CONNECT (internal_access_path) through the connector, keeping the console's bytes after the answer", async () => {
    const connectProxy = await startTcpUpstream((socket) => {
      socket.once('data', (request: Buffer) => {
        socket.write(
          request.toString('latin1').startsWith('CONNECT /console/7 HTTP/1.1\r\n')
            ? 'HTTP/1.1 200 OK\r\n\r\nRFB 003.008\n'
            : 'HTTP/1.1 403 No\r\n\r\n',
        );
      });
    });
    try {
      await whileAllowing(connectProxy.port, async () => {
        const socket = (await connectUpstream(
          { host: '127.0.0.1', port: connectProxy.port, internalAccessPath: '/console/7' },
          5_000,
          undefined,
          connectorDialer(socketPath),
        )) as Socket;
        openSockets.push(socket);
        expect((await firstChunk(socket)).toString()).toBe('RFB 003.008\n');
      });
    } finally {
      await connectProxy.close();
    }
  });

  it('gives up with connect timeout on a connector that never answers', async () => {
    const silent = await startUnixServer(path.join(dir, 'silent.sock'));
    try {
      const started = Date.now();
      await expect(connectorDialer(path.join(dir, 'silent.sock'))({ host: '127.0.0.1', port: 5900 }, 500)).rejects.toMatchObject({
        reason: 'connect timeout',
      });
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      await silent.close();
    }
  });

  /**
   * Writes `chunk` to `writer` while it takes it; resolves with the bytes it took once a write has
   * not been taken for 2 s (held back), or at `limit`.
   */
  async function writeUntilHeldBack(writer: Socket, chunk: Buffer, limit: number): Promise<number> {
    let accepted = 0;
    while (accepted < limit) {
      const flushed = writer.write(chunk);
      accepted += chunk.length;
      if (!flushed) {
        const drained = await Promise.race([
          new Promise<boolean>((resolve) => writer.once('drain', () => resolve(true))),
          new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 2_000)),
        ]);
        if (!drained) {
          break;
        }
      }
    }
    return accepted;
  }

  // Socket buffers (the UNIX socket's, the TCP ones, a pipe's) hold a few MiB; a connector that
  // buffered without bound would have taken all 256 MiB.
  const LIMIT = 256 * 1024 * 1024;
  const HELD_AT_MOST = 48 * 1024 * 1024;

  it('bounds memory with a slow console: the client is held back, and nothing is lost once it reads', async () => {
    let consoleSide: Socket | undefined;
    const stalled = await startTcpUpstream((socket) => {
      consoleSide = socket;
      socket.pause();
    });
    try {
      await whileAllowing(stalled.port, async () => {
        const client = await dialThroughConnector(stalled.port);
        const accepted = await writeUntilHeldBack(client, randomBytes(256 * 1024), LIMIT);
        expect(accepted).toBeLessThan(HELD_AT_MOST);
        const received = readAll(consoleSide!);
        client.end();
        expect((await withDeadline(received, 60_000, 'the held-back bytes once the console reads')).length).toBe(accepted);
      });
    } finally {
      await stalled.close();
    }
  });

  it('bounds memory with a slow client: the console is held back, and nothing is lost once the client reads', async () => {
    let consoleSide: Socket | undefined;
    const flooding = await startTcpUpstream((socket) => (consoleSide = socket));
    try {
      await whileAllowing(flooding.port, async () => {
        const client = await dialThroughConnector(flooding.port);
        await waitUntil(() => consoleSide);
        // The client does not read (the dialer hands the stream over unread).
        const accepted = await writeUntilHeldBack(consoleSide!, randomBytes(256 * 1024), LIMIT);
        expect(accepted).toBeLessThan(HELD_AT_MOST);
        const received = readAll(client);
        consoleSide!.end();
        expect((await withDeadline(received, 60_000, 'the held-back bytes once the client reads')).length).toBe(accepted);
        client.end();
      });
    } finally {
      await flooding.close();
    }
  });

  it('counts connections and bytes in its metrics', async () => {
    await waitUntil(() => (connector.connections.live === 0 ? true : undefined), 10_000, 'the earlier connections to end');
    const before = await metricValue('keyhole_connector_connections_total', { result: 'ok' });
    const socket = await dialThroughConnector(allowed.port);
    const back = readAll(socket);
    socket.end('count me');
    expect((await back).toString()).toBe('count me');
    await waitUntil(async () =>
      (await metricValue('keyhole_connector_connections_total', { result: 'ok' })) === before + 1 ? true : undefined,
    );
    expect(await metricValue('keyhole_connector_bytes_total', { direction: 'forward' })).toBeGreaterThanOrEqual(8);
    expect(connector.connections.live).toBe(0);
  });

  it('will not take over the socket of a live connector, and replaces the socket file of a dead one', async () => {
    const second = anotherConnector('second', socketPath);
    await expect(second.start()).rejects.toThrow(`a connector is already listening on ${socketPath}`);

    // A socket file that nobody accepts on any more: what a killed connector leaves.
    const stalePath = path.join(dir, 'stale.sock');
    const dead = createServer();
    await new Promise<void>((resolve) => dead.listen(stalePath, resolve));
    // close() would remove the file; a killed process does not.
    (dead as unknown as { _handle: { close(): void } | null })._handle?.close();
    await expect(connectorDialer(stalePath)({ host: '127.0.0.1', port: allowed.port }, 5_000)).rejects.toMatchObject({
      reason: 'connector missing',
    });
    const replacement = anotherConnector('stale', stalePath);
    await replacement.start();
    try {
      const socket = (await connectorDialer(stalePath)({ host: '127.0.0.1', port: allowed.port }, 5_000)) as Socket;
      openSockets.push(socket);
      const back = readAll(socket);
      socket.end('replaced');
      expect((await back).toString()).toBe('replaced');
    } finally {
      await replacement.stop(0);
    }
  });

  it('closes connections beyond --max-connections at once, counting and logging them', async () => {
    const limitedPath = path.join(dir, 'limited.sock');
    const limitedMetrics = new ConnectorMetrics('limited', 'serve');
    const limited = anotherConnector('limited', limitedPath, { metrics: limitedMetrics, maxConnections: 2 });
    await limited.start();
    try {
      const dial = connectorDialer(limitedPath);
      const first = (await dial({ host: '127.0.0.1', port: allowed.port }, 5_000)) as Socket;
      const second = (await dial({ host: '127.0.0.1', port: allowed.port }, 5_000)) as Socket;
      openSockets.push(first, second);
      await expect(dial({ host: '127.0.0.1', port: allowed.port }, 5_000)).rejects.toMatchObject({
        reason: expect.stringMatching(/^connector (closed|failed)$/),
      });
      const overLimit = (await limitedMetrics.registry.getMetricsAsJSON())
        .find((metric) => metric.name === 'keyhole_connector_connections_total')
        ?.values.find((sample) => sample.labels.result === 'over_limit');
      expect(overLimit?.value).toBe(1);
      expect(logged('connection refused: too many connections').at(-1)).toMatchObject({ live: 2, level: 'warn' });
      // The two admitted connections still work.
      const back = readAll(first);
      first.end('admitted');
      expect((await back).toString()).toBe('admitted');
    } finally {
      await limited.stop(0);
    }
  });

  it('fails the dial quickly and clearly when no connector socket exists', async () => {
    const started = Date.now();
    const error = await connectorDialer(path.join(dir, 'nobody.sock'))({ host: '127.0.0.1', port: 5900 }, 5_000).catch(
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(UpstreamError);
    expect(error).toMatchObject({ reason: 'connector missing' });
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  it('stops gracefully: refuses new connections at once, lets a live one finish within the grace period', async () => {
    const gracefulPath = path.join(dir, 'graceful.sock');
    const graceful = anotherConnector('graceful', gracefulPath);
    await graceful.start();
    const live = (await connectorDialer(gracefulPath)({ host: '127.0.0.1', port: allowed.port }, 5_000)) as Socket;
    openSockets.push(live);
    const back = readAll(live);
    const stopped = graceful.stop(10_000);
    await waitUntil(async () => ((await stat(gracefulPath).catch(() => undefined)) === undefined ? true : undefined));
    await expect(connectorDialer(gracefulPath)({ host: '127.0.0.1', port: allowed.port }, 5_000)).rejects.toMatchObject({
      reason: 'connector missing',
    });
    // The live connection still works, and ends the stop when it ends.
    live.end('finishing');
    expect((await back).toString()).toBe('finishing');
    await withDeadline(stopped, 5_000, 'the stop once the last connection ended');
    expect(logged('connector stopped').at(-1)).toMatchObject({ connector: 'graceful', cut: 0 });
  });
  it('cuts the connections still live when the grace period is over, on both sides', async () => {
    const cutPath = path.join(dir, 'cut.sock');
    const cutting = anotherConnector('cutting', cutPath);
    await cutting.start();
    const consoleSide = allowed.nextConnection();
    const live = (await connectorDialer(cutPath)({ host: '127.0.0.1', port: allowed.port }, 5_000)) as Socket;
    openSockets.push(live);
    const consoleClosed = consoleSide.then(
      (socket) => new Promise<void>((resolve) => (socket.closed ? resolve() : socket.once('close', () => resolve()))),
    );
    const ended = new Promise<void>((resolve) => live.once('end', () => resolve()));
    live.on('error', () => undefined);
    live.resume();
    const started = Date.now();
    await cutting.stop(300);
    await withDeadline(ended, 5_000, 'the live connection to be cut');
    await withDeadline(consoleClosed, 5_000, "the connector's connection to the console to be closed too");
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    expect(logged('connector stopped').at(-1)).toMatchObject({ connector: 'cutting', cut: 1 });
  });
});

describe('connector status files', () => {
  it('lists running connectors and shows a connector whose process is gone as stale; --prune removes its file', async () => {
    const runDir = path.join(dir, 'run');
    const running = new StatusFile(runDir, {
      name: 'alive',
      mode: 'serve',
      pid: process.pid,
      socket: socketPath,
      listening: [],
      startedAt: new Date().toISOString(),
      connections: { live: 0, total: 0 },
    });
    await running.start();
    running.update({ live: 1, total: 5 });
    // A process that has exited: its PID is free (and not reused within this test).
    const gone = await startProcess(process.execPath, ['-e', '']);
    await gone.exited;
    await writeFile(
      path.join(runDir, 'connector-dead.json'),
      JSON.stringify({
        name: 'dead',
        mode: 'expose',
        pid: gone.pid,
        socket: '/run/x.sock',
        listening: ['169.254.16.9:5030'],
        startedAt: '',
        connections: { live: 3, total: 9 },
      }),
    );
    try {
      const rows = await waitUntil(
        async () => {
          const listed = await listConnectors(runDir);
          return listed.find((row) => row.name === 'alive')?.total === 5 ? listed : undefined;
        },
        5_000,
        'the status file to be rewritten with the new counts',
      );
      expect(rows).toEqual([
        expect.objectContaining({
          name: 'alive',
          mode: 'serve',
          pid: process.pid,
          live: 1,
          total: 5,
          state: 'running',
          netnsInode: expect.stringMatching(/^net:\[\d+\]$/),
        }),
        expect.objectContaining({
          name: 'dead',
          mode: 'expose',
          pid: gone.pid,
          live: 0,
          total: 9,
          state: 'stale',
          netnsInode: null,
          listening: '169.254.16.9:5030',
        }),
      ]);
      expect((await listConnectors(runDir, true)).map((row) => row.state)).toEqual(['running', 'stale']);
      expect((await listConnectors(runDir)).map((row) => row.name)).toEqual(['alive']);
    } finally {
      await running.remove();
    }
    expect(await listConnectors(runDir)).toEqual([]);
  });
});

describe('tproxy files (OpenNebula syntax)', () => {
  const FILE = `
:tproxy:
  # OneGate for every network
  - :service_port: 5030
    :remote_addr: 127.0.0.1
    :remote_port: 8080
  - service_port: 1234
    remote_addr: 169.254.40.5
    remote_port: 1234
    networks: [tenant-a]
  - :service_port: 5030
    :remote_addr: 127.0.0.1
    :remote_port: 9090
    :networks: [tenant-b]
:debug_level: 2
`;

  it('reads keys with and without the leading colon, and ignores the rest of OpenNebulaNetwork.conf', () => {
    expect(parseTproxyFile(FILE, 'tproxy.yaml')).toEqual([
      { servicePort: 5030, remoteAddr: '127.0.0.1', remotePort: 8080, networks: undefined },
      { servicePort: 1234, remoteAddr: '169.254.40.5', remotePort: 1234, networks: ['tenant-a'] },
      { servicePort: 5030, remoteAddr: '127.0.0.1', remotePort: 9090, networks: ['tenant-b'] },
    ]);
  });

  it('applies entries with networks only to those networks; the first entry of a service port wins', () => {
    const entries = parseTproxyFile(FILE, 'tproxy.yaml');
    expect(selectTproxyEntries(entries, undefined)).toEqual({ entries: [entries[0]], ignored: [] });
    expect(selectTproxyEntries(entries, 'tenant-a').entries).toEqual([entries[0], entries[1]]);
    expect(selectTproxyEntries(entries, 'tenant-b')).toEqual({
      entries: [entries[0]],
      ignored: [{ entry: entries[2], index: 2, shadowedBy: 0 }],
    });
  });

  it('refuses bad entries, naming the entry and the key', () => {
    const problems = (text: string) => {
      try {
        parseTproxyFile(text, 't.yaml');
      } catch (error) {
        if (error instanceof TproxyFileError) {
          return error.problems;
        }
        throw error;
      }
      throw new Error('accepted');
    };
    expect(problems(':tproxy:\n  - :service_port: 70000\n    :remote_addr: 127.0.0.1\n    :remote_port: 1\n')).toEqual([
      't.yaml: :tproxy[0]:service_port: must be between 1 and 65535',
    ]);
    expect(problems(':tproxy:\n  - :service_port: 1\n    :remote_addr: "not a host"\n    :remote_port: 1\n    :remote_prot: 2\n')).toEqual([
      't.yaml: :tproxy[0]:remote_addr: must be an IP address or a host name',
      't.yaml: :tproxy[0]: Unrecognized key: "remote_prot" (:remote_prot)',
    ]);
    expect(problems(':debug_level: 2\n')).toEqual(['t.yaml: :tproxy: required']);
  });
});

describe('connector expose', () => {
  it('carries connections from each service port to the serving connector, which dials the remote; refusals close the connection', async () => {
    const exposeLogs = captureLogs('keyhole-connector-expose');
    const servicePort = await freePort();
    const refusedPort = await freePort();
    const exposeMetrics = new ConnectorMetrics('tenant', 'expose');
    const expose = new ExposeConnector({
      name: 'tenant',
      entries: [
        { servicePort, remoteAddr: '127.0.0.1', remotePort: allowed.port },
        { servicePort: refusedPort, remoteAddr: '127.0.0.1', remotePort: forbidden.port },
      ],
      address: '127.0.0.1',
      socketPath,
      logger: exposeLogs.pino,
      metrics: exposeMetrics,
    });
    await expose.start();
    try {
      expect(expose.listening).toEqual([`127.0.0.1:${servicePort}`, `127.0.0.1:${refusedPort}`]);
      const data = randomBytes(4 * 1024 * 1024);
      const client = createConnection({ host: '127.0.0.1', port: servicePort, allowHalfOpen: true });
      openSockets.push(client);
      const back = readAll(client);
      client.end(data);
      const echoed = await withDeadline(back, 30_000, '4 MiB through expose and serve');
      expect(sha256(echoed)).toBe(sha256(data));

      const refused = createConnection({ host: '127.0.0.1', port: refusedPort });
      openSockets.push(refused);
      expect((await withDeadline(readAll(refused), 10_000, 'the refused connection to close')).length).toBe(0);
      await waitUntil(() => exposeLogs.lines.find((line) => line.includes('"msg":"connection refused"')), 5_000, 'the refusal log line');
      expect(JSON.parse(exposeLogs.lines.find((line) => line.includes('"msg":"connection refused"'))!)).toMatchObject({
        servicePort: refusedPort,
        destination: `127.0.0.1:${forbidden.port}`,
        result: 'refused',
        reason: 'connector refused: not allowed',
      });
      await waitUntil(() => (expose.connections.live === 0 ? true : undefined));
      expect(expose.connections.total).toBe(2);
    } finally {
      await expose.stop(0);
    }
    // Stopped: nothing listens on the service port any more.
    const error = await new Promise<NodeJS.ErrnoException>((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port: servicePort });
      socket.once('error', resolve);
      socket.once('connect', () => {
        void closeSocket(socket);
        resolve(Object.assign(new Error('connected'), { code: 'CONNECTED' }));
      });
    });
    expect(error.code).toBe('ECONNREFUSED');
  });
});
