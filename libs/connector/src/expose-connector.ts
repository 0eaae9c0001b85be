import { createServer, Server, Socket } from 'node:net';
import type { Logger } from 'pino';
import { UpstreamError } from '@keyhole/upstream';
import { ConnectionTracker, refuseConnection } from './connection-tracker';
import { connectorDialer } from './connector-dialer';
import { formatDestination } from './connector-protocol';
import type { ConnectorMetrics } from './connector.metrics';
import { splice } from './splice';
import type { TproxyEntry } from './tproxy-file';

/** OpenNebula's address for services reached through transparent proxies, from inside a tenant network. */
export const DEFAULT_EXPOSE_ADDRESS = '169.254.16.9';

export interface ExposeConnectorOptions {
  name: string;
  /** The entries to listen for (already selected for the network: selectTproxyEntries). */
  entries: TproxyEntry[];
  /** The address to listen on for every entry (default 169.254.16.9). */
  address?: string;
  /** The UNIX socket of the serving connector that dials each entry's remote_addr:remote_port. */
  socketPath: string;
  logger: Logger;
  metrics: ConnectorMetrics;
  /** Bound on reaching the serving connector and its connect, ms (default 5000). */
  connectTimeoutMs?: number;
  onConnections?: (counts: { live: number; total: number }) => void;
  /** Connections carried at once; more are closed at once (default 4096). */
  maxConnections?: number;
}

/**
 * `keyhole connector expose`, OpenNebula's direction: inside a tenant's network namespace, listens
 * on ADDRESS:service_port for each mapping entry, and carries each connection over the UNIX socket
 * to a serving connector in another namespace, asking it for remote_addr:remote_port. The tenant
 * gets a service without a route out: its namespace and the service's never share a TCP/IP stack.
 */
export class ExposeConnector {
  private readonly tracker: ConnectionTracker;
  private readonly servers: Server[] = [];
  private readonly address: string;
  private readonly connectTimeoutMs: number;
  private readonly dial;

  constructor(private readonly options: ExposeConnectorOptions) {
    this.tracker = new ConnectionTracker(options.metrics, options.onConnections, options.maxConnections);
    this.address = options.address ?? DEFAULT_EXPOSE_ADDRESS;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 5_000;
    this.dial = connectorDialer(options.socketPath);
  }

  get connections(): { live: number; total: number } {
    return this.tracker.counts;
  }

  /** `address:port` of every listener. */
  get listening(): string[] {
    return this.options.entries.map((entry) => formatDestination({ host: this.address, port: entry.servicePort }));
  }

  /** Listens for every entry; if one cannot listen, closes those that did and throws. */
  async start(): Promise<void> {
    try {
      for (const entry of this.options.entries) {
        const server = createServer({ allowHalfOpen: true }, (socket) => void this.handle(socket, entry));
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(entry.servicePort, this.address, () => {
            server.off('error', reject);
            resolve();
          });
        });
        this.servers.push(server);
      }
    } catch (error) {
      await this.closeServers();
      throw error;
    }
    this.options.logger.info(
      {
        connector: this.options.name,
        socket: this.options.socketPath,
        listening: this.options.entries.map((entry) => ({
          listen: formatDestination({ host: this.address, port: entry.servicePort }),
          remote: formatDestination({ host: entry.remoteAddr, port: entry.remotePort }),
        })),
      },
      'connector listening',
    );
  }

  /** Stops accepting, lets live connections finish for `graceMs`, then cuts the rest. */
  async stop(graceMs: number): Promise<void> {
    const closed = this.closeServers();
    this.options.logger.info({ connector: this.options.name, live: this.tracker.counts.live, graceMs }, 'connector stopping');
    const cut = await this.tracker.drain(graceMs);
    await closed;
    this.options.logger.info({ connector: this.options.name, cut }, 'connector stopped');
  }

  private async closeServers(): Promise<void> {
    const servers = this.servers.splice(0);
    await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
  }

  private async handle(client: Socket, entry: TproxyEntry): Promise<void> {
    if (!this.tracker.admit(client, (live) => this.options.logger.warn({ live }, 'connection refused: too many connections'))) {
      return;
    }
    client.on('error', () => undefined);
    client.pause();
    const startedAt = performance.now();
    const destination = formatDestination({ host: entry.remoteAddr, port: entry.remotePort });
    let upstream: Socket;
    try {
      upstream = (await this.dial({ host: entry.remoteAddr, port: entry.remotePort }, this.connectTimeoutMs)) as Socket;
    } catch (error) {
      const reason = error instanceof UpstreamError ? error.reason : 'connector failed';
      const unreachable = reason === 'connector missing' || reason === 'connector failed' || reason === 'connect timeout';
      this.options.metrics.connections.inc({ result: unreachable ? 'unreachable' : 'refused' });
      this.options.logger.warn(
        { servicePort: entry.servicePort, destination, result: unreachable ? 'unreachable' : 'refused', reason },
        'connection refused',
      );
      // The client learns no more than a closed connection: the reason is in this log.
      refuseConnection(client);
      return;
    }
    if (client.destroyed) {
      upstream.destroy();
      return;
    }
    const stats = await splice(client, upstream);
    this.options.metrics.connections.inc({ result: 'ok' });
    this.options.metrics.bytes.inc({ direction: 'forward' }, stats.bytesForward);
    this.options.metrics.bytes.inc({ direction: 'back' }, stats.bytesBack);
    this.options.logger.info(
      {
        servicePort: entry.servicePort,
        destination,
        result: 'ok',
        bytesToDestination: stats.bytesForward,
        bytesFromDestination: stats.bytesBack,
        durationMs: Math.round(performance.now() - startedAt),
      },
      'connection closed',
    );
  }
}
