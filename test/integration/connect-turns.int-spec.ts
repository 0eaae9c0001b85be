import { createServer, Server, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { performance } from 'node:perf_hooks';
import { ConnectTurns, connectUpstream, UpstreamError } from '@keyhole/upstream';

const BANNER = Buffer.from('RFB 003.008\n');

/** A console on 127.0.0.1, port 0, with the given listen backlog; `greet` = sends QEMU's banner at accept. */
async function startConsole(backlog: number, greet: boolean): Promise<{ server: Server; port: number; accepted: Socket[] }> {
  const accepted: Socket[] = [];
  const server = createServer((socket) => {
    accepted.push(socket);
    socket.on('error', () => undefined);
    if (greet) {
      socket.write(BANNER);
    }
  });
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0, backlog }, resolve));
  return { server, port: (server.address() as { port: number }).port, accepted };
}

async function stopConsole(console: { server: Server; accepted: Socket[] }): Promise<void> {
  for (const socket of console.accepted) {
    socket.destroy();
  }
  await new Promise((resolve) => console.server.close(resolve));
}

/** Connects, resumes, and resolves with the first bytes and the ms from start to them. */
async function firstBytes(port: number, turns: ConnectTurns | undefined): Promise<{ bytes: Buffer; ms: number; socket: Duplex }> {
  const started = performance.now();
  const socket = await connectUpstream({ host: '127.0.0.1', port, internalAccessPath: null }, 5_000, turns);
  return new Promise((resolve, reject) => {
    socket.once('data', (bytes: Buffer) => resolve({ bytes, ms: performance.now() - started, socket }));
    socket.once('error', reject);
    socket.resume();
  });
}

describe('ConnectTurns', () => {
  const consoles: Array<{ server: Server; accepted: Socket[] }> = [];
  const sockets: Duplex[] = [];
  afterEach(async () => {
    for (const socket of sockets.splice(0)) {
      socket.destroy();
    }
    for (const console of consoles.splice(0)) {
      await stopConsole(console);
    }
  });

  it('lets 20 browsers open a console with a listen backlog of 1 at once, without SYN retries', async () => {
    const qemuLike = await startConsole(1, true);
    consoles.push(qemuLike);
    const turns = new ConnectTurns(50);

    const results = await Promise.all(Array.from({ length: 20 }, () => firstBytes(qemuLike.port, turns)));
    sockets.push(...results.map((result) => result.socket));

    for (const result of results) {
      expect(result.bytes.equals(BANNER)).toBe(true);
    }
    // A dropped SYN is sent again after 1 s: taking turns, no connect comes near that. (What the
    // kernel does without turns is measured by the bench, bench/syn-retry.ts, not asserted here.)
    expect(Math.max(...results.map((result) => result.ms))).toBeLessThan(800);
    expect(turns.busyConsoles).toBe(0);
  });

  it('does not make a connect wait when no other connect to that console is in its handshake', async () => {
    const turns = new ConnectTurns(50);
    const release = turns.take('127.0.0.1:5900', 1_000);
    await expect(release).resolves.toEqual(expect.any(Function));
    // Another console is not held up by the first one's turn.
    await expect(turns.take('127.0.0.1:5901', 1_000)).resolves.toEqual(expect.any(Function));
    expect(turns.busyConsoles).toBe(2);
  });

  it('lets the next connect start when the console spoke, keeping the bytes it sent for the reader', async () => {
    const qemuLike = await startConsole(511, true);
    consoles.push(qemuLike);
    const turns = new ConnectTurns(10_000);

    const first = await connectUpstream({ host: '127.0.0.1', port: qemuLike.port, internalAccessPath: null }, 5_000, turns);
    sockets.push(first);
    // The second one waits for the first's banner, not for the 10 s settle time.
    const second = await firstBytes(qemuLike.port, turns);
    sockets.push(second.socket);
    expect(second.bytes.equals(BANNER)).toBe(true);
    expect(second.ms).toBeLessThan(2_000);

    // The first socket's banner was observed, not consumed.
    const firstBanner = await new Promise<Buffer>((resolve) => {
      first.once('data', resolve);
      first.resume();
    });
    expect(firstBanner.equals(BANNER)).toBe(true);
  });

  it('makes only the first burst of connects to a console that waits for its client (SPICE, serial) wait, for one settle time', async () => {
    const silent = await startConsole(511, false);
    consoles.push(silent);
    const turns = new ConnectTurns(200);
    const target = { host: '127.0.0.1', port: silent.port, internalAccessPath: null };
    const connectFive = () => Promise.all(Array.from({ length: 5 }, () => connectUpstream(target, 5_000, turns)));

    const started = performance.now();
    sockets.push(...(await connectFive()));
    const burstMs = performance.now() - started;
    // The first connect held its turn for the settle time; then the console was known to be silent
    // and the others went at once (one settle each would be 1 s).
    expect(burstMs).toBeGreaterThanOrEqual(180);
    expect(burstMs).toBeLessThan(600);
    expect(turns.busyConsoles).toBe(0);

    // Remembered: later connects to it do not take turns at all.
    const later = performance.now();
    sockets.push(...(await connectFive()));
    expect(performance.now() - later).toBeLessThan(150);
  });

  it('ends the turn at once when the connect fails or the connection closes', async () => {
    const turns = new ConnectTurns(10_000);
    const closed = await startConsole(511, false);
    const port = closed.port;
    await stopConsole(closed);
    await expect(connectUpstream({ host: '127.0.0.1', port, internalAccessPath: null }, 5_000, turns)).rejects.toMatchObject({
      reason: 'connect refused',
    });
    expect(turns.busyConsoles).toBe(0);

    const silent = await startConsole(511, false);
    consoles.push(silent);
    const first = await connectUpstream({ host: '127.0.0.1', port: silent.port, internalAccessPath: null }, 5_000, turns);
    const waiting = connectUpstream({ host: '127.0.0.1', port: silent.port, internalAccessPath: null }, 5_000, turns);
    first.destroy();
    sockets.push(await waiting);
  });

  it('gives up on a turn that does not come within the connect timeout, and serves the next waiter', async () => {
    const turns = new ConnectTurns(10_000);
    const releaseFirst = await turns.take('127.0.0.1:5900', 1_000);

    const error = await turns.take('127.0.0.1:5900', 50).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(UpstreamError);
    expect((error as UpstreamError).reason).toBe('connect timeout');

    const third = turns.take('127.0.0.1:5900', 1_000);
    releaseFirst?.();
    const releaseThird = await third;
    releaseThird?.();
    releaseThird?.(); // idempotent: must not hand the turn on twice
    expect(turns.busyConsoles).toBe(0);
  });
});
