import { chmod, lstat, stat, unlink } from 'node:fs/promises';
import { connect, createServer, Server, Socket } from 'node:net';
import type { Logger } from 'pino';
import { dialTcp, loadRoutesFile, Routes, RoutesFileError, UpstreamError } from '@keyhole/upstream';
import { ConnectionTracker, refuseConnection } from './connection-tracker';
import { ConnectorStatus, ConnectorStatusName, formatDestination, HeaderRefusal, readHeader, STATUS_TEXT } from './connector-protocol';
import type { ConnectionResult, ConnectorMetrics } from './connector.metrics';
import { splice } from './splice';

export interface ServeConnectorOptions {
  name: string;
  /** The UNIX socket to listen on (absolute path). */
  socketPath: string;
  /** Its allow-list: a routes file whose routes are all `via: direct`. */
  routesFile: string;
  logger: Logger;
  metrics: ConnectorMetrics;
  /** How long a client has to send its whole header, ms (default 5000). */
  headerTimeoutMs?: number;
  /** Bound on the TCP connect to a destination, ms (default 5000). */
  connectTimeoutMs?: number;
  /** Called whenever the live or total count of connections changes (the status file). */
  onConnections?: (counts: { live: number; total: number }) => void;
  /** Connections carried at once; more are closed at once (default 4096). */
  maxConnections?: number;
}

/**
 * The buffer bound of both sockets of a connection. Node reads a socket 64 KiB at a time, and a
 * pipe() into a socket whose bound is the default 16 KiB pauses and resumes its source around
 * nearly every read under load; 256 KiB lets a few reads be in flight. Still a bound: a slow
 * reader holds at most this much (per direction) in the connector.
 */
const RELAY_HIGH_WATER_MARK = 256 * 1024;

/** Refusals by status: their metric label. */
const RESULT_OF: Record<Exclude<ConnectorStatusName, 'ok'>, ConnectionResult> = {
  notAllowed: 'not_allowed',
  connectFailed: 'connect_failed',
  timeout: 'timeout',
  malformed: 'malformed',
  unsupportedVersion: 'unsupported_version',
};

/**
 * `keyhole connector serve`: listens on a UNIX socket (mode 0660) and, for each connection, reads a
 * request header (connector-protocol.ts) and dials the destination it names with a TCP connect from
 * this process's network namespace, only if its own routes file allows it. Then it answers ok and
 * carries bytes both ways. The proxy's routes decide which connector to ask; this file decides what
 * the connector will dial, and it belongs to whoever runs the namespace with the consoles in it.
 */
export class ServeConnector {
  private readonly tracker: ConnectionTracker;
  private readonly headerTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private routes: Routes | undefined;
  private server: Server | undefined;
  /** The socket file's inode, so that stop() never removes a file another connector created since. */
  private socketInode: number | undefined;

  constructor(private readonly options: ServeConnectorOptions) {
    this.tracker = new ConnectionTracker(options.metrics, options.onConnections, options.maxConnections);
    this.headerTimeoutMs = options.headerTimeoutMs ?? 5_000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 5_000;
  }

  get connections(): { live: number; total: number } {
    return this.tracker.counts;
  }

  /** Loads the routes, replaces a stale socket file, and listens. Throws if another connector listens on the socket. */
  async start(): Promise<void> {
    this.routes = await loadServeRoutes(this.options.routesFile);
    await removeStaleSocket(this.options.socketPath);
    const server = createServer({ allowHalfOpen: true, highWaterMark: RELAY_HIGH_WATER_MARK }, (socket) => void this.handle(socket));
    // Created 0660 (no window with a wider mode): only the owner and the group (the proxy's) may connect.
    const previousMask = process.umask(0o117);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(this.options.socketPath, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } finally {
      process.umask(previousMask);
    }
    await chmod(this.options.socketPath, 0o660);
    this.socketInode = (await stat(this.options.socketPath)).ino;
    this.server = server;
    this.options.logger.info(
      { connector: this.options.name, socket: this.options.socketPath, routesFile: this.options.routesFile, routes: this.routes.size },
      'connector listening',
    );
  }

  /**
   * Reads the routes file again (SIGHUP). A file that cannot be used is refused with an error line
   * and the routes in use stay; live connections are never affected.
   */
  async reloadRoutes(): Promise<boolean> {
    try {
      this.routes = await loadServeRoutes(this.options.routesFile);
    } catch (error) {
      const problems = error instanceof RoutesFileError ? error.problems : [String(error)];
      this.options.logger.error({ file: this.options.routesFile, problems }, 'routes file refused: the previous routes stay in use');
      return false;
    }
    this.options.logger.info({ file: this.options.routesFile, routes: this.routes.size }, 'routes reloaded');
    return true;
  }

  /**
   * Stops accepting (the socket file goes at once, so proxies see `connector missing`), lets live
   * connections finish for `graceMs`, then cuts the rest.
   */
  async stop(graceMs: number): Promise<void> {
    const server = this.server;
    if (server === undefined) {
      return;
    }
    this.server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    if (this.socketInode !== undefined && (await stat(this.options.socketPath).catch(() => undefined))?.ino === this.socketInode) {
      await unlink(this.options.socketPath).catch(() => undefined);
    }
    this.options.logger.info({ connector: this.options.name, live: this.tracker.counts.live, graceMs }, 'connector stopping');
    const cut = await this.tracker.drain(graceMs);
    await closed;
    this.options.logger.info({ connector: this.options.name, cut }, 'connector stopped');
  }

  private async handle(socket: Socket): Promise<void> {
    if (!this.tracker.admit(socket, (live) => this.options.logger.warn({ live }, 'connection refused: too many connections'))) {
      return;
    }
    socket.on('error', () => undefined);
    const startedAt = performance.now();
    const header = await readHeader(socket, this.headerTimeoutMs);
    if ('refusal' in header) {
      this.refuse(socket, header.refusal.status, { reason: header.refusal.reason });
      return;
    }
    const { destination } = header;
    const target = formatDestination(destination);
    const route = this.routes?.match(destination.host, destination.port);
    if (route === undefined) {
      this.refuse(socket, 'notAllowed', { destination: target, reason: 'no route of the connector allows it' });
      return;
    }
    let upstream: Socket;
    try {
      upstream = (await dialTcp(destination, this.connectTimeoutMs, RELAY_HIGH_WATER_MARK)) as Socket;
    } catch (error) {
      const timeout = error instanceof UpstreamError && error.reason === 'connect timeout';
      this.refuse(socket, timeout ? 'timeout' : 'connectFailed', {
        destination: target,
        route: route.name,
        reason: error instanceof Error ? error.message : String(error),
      });
      return;
    }
    if (socket.destroyed) {
      upstream.destroy();
      return;
    }
    // dialTcp's socket ends its writable side when the console ends its own: a half-close must
    // travel as one, like the client's.
    upstream.allowHalfOpen = true;
    socket.write(Buffer.from([ConnectorStatus.ok]));
    const stats = await splice(socket, upstream);
    this.options.metrics.connections.inc({ result: 'ok' });
    this.options.metrics.bytes.inc({ direction: 'forward' }, stats.bytesForward);
    this.options.metrics.bytes.inc({ direction: 'back' }, stats.bytesBack);
    this.options.logger.info(
      {
        destination: target,
        route: route.name,
        result: 'ok',
        bytesToDestination: stats.bytesForward,
        bytesFromDestination: stats.bytesBack,
        durationMs: Math.round(performance.now() - startedAt),
      },
      'connection closed',
    );
  }

  private refuse(
    socket: Socket,
    status: HeaderRefusal['status'] | 'notAllowed' | 'connectFailed' | 'timeout',
    fields: Record<string, unknown>,
  ): void {
    this.options.metrics.connections.inc({ result: RESULT_OF[status] });
    this.options.logger.warn({ ...fields, result: STATUS_TEXT[status] }, 'connection refused');
    refuseConnection(socket, Buffer.from([ConnectorStatus[status]]));
  }
}

/** The connector's routes: a routes file that only dials directly (it is the far end of a route). */
async function loadServeRoutes(file: string): Promise<Routes> {
  const routes = await loadRoutesFile(file);
  const problems = routes.list
    .filter((route) => route.via.kind !== 'direct')
    .map((route) => `${file}:${route.line}: routes: "${route.name}" is via ${route.via.kind}: a connector dials directly only`);
  if (problems.length > 0) {
    throw new RoutesFileError(file, problems);
  }
  return routes;
}

/**
 * Clears the way for listening on `path`: nothing there, or a socket file left by a connector that
 * died (nobody accepts on it), which is removed. A live connector's socket, or a file that is not a
 * socket, is an error: never take over another connector's socket or delete someone's file.
 */
async function removeStaleSocket(path: string): Promise<void> {
  const existing = await lstat(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') {
      return undefined;
    }
    throw error;
  });
  if (existing === undefined) {
    return;
  }
  if (!existing.isSocket()) {
    throw new Error(`${path} exists and is not a socket: not replacing it`);
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) {
    throw new Error(`a connector is already listening on ${path}`);
  }
  await unlink(path);
}
