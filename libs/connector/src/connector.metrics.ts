import { createServer, Server } from 'node:http';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * How a connection through a connector ended; the only label values of the connections counter.
 * `serve` answers with the first six (its status codes); `expose` counts `refused` when the serving
 * connector would not carry a connection, and `unreachable` when there was no connector to ask;
 * both count `over_limit` for connections closed at once because `--max-connections` were live.
 */
export type ConnectionResult =
  'ok' | 'not_allowed' | 'connect_failed' | 'timeout' | 'malformed' | 'unsupported_version' | 'refused' | 'unreachable';

/**
 * A connector's Prometheus metrics, in a registry of its own. Labels are fixed small sets (the
 * connector's name, a result, a direction): never an address, a port or a token.
 */
export class ConnectorMetrics {
  readonly registry = new Registry();
  readonly connections: Counter<'result'>;
  readonly live: Gauge;
  readonly bytes: Counter<'direction'>;

  constructor(name: string, mode: 'serve' | 'expose') {
    this.registry.setDefaultLabels({ connector: name, mode });
    collectDefaultMetrics({ register: this.registry, prefix: 'keyhole_connector_process_' });
    this.connections = new Counter({
      name: 'keyhole_connector_connections_total',
      help: 'Connections accepted by the connector, by result',
      labelNames: ['result'],
      registers: [this.registry],
    });
    this.live = new Gauge({ name: 'keyhole_connector_connections_live', help: 'Connections carried now', registers: [this.registry] });
    this.bytes = new Counter({
      name: 'keyhole_connector_bytes_total',
      help: 'Bytes carried, by direction (forward: from the side that connected; back: towards it)',
      labelNames: ['direction'],
      registers: [this.registry],
    });
  }

  /** Serves `GET /metrics` on `host:port` (port 0: a free one); resolves with the listening server. */
  async serve(port: number, host = '127.0.0.1'): Promise<Server> {
    const server = createServer((request, response) => {
      if (request.method !== 'GET' || request.url !== '/metrics') {
        response.writeHead(404).end();
        return;
      }
      this.registry.metrics().then(
        (text) => response.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        () => response.writeHead(500).end(),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return server;
  }
}
