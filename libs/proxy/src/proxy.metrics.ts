import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { SessionWriteMetrics } from './session-recorder';

/** Results of a websocket connect attempt; the only label values of the connects counter. */
export type ConnectResult =
  | 'accepted'
  | 'no_token'
  | 'invalid_token'
  | 'wrong_console_type'
  | 'forbidden_origin'
  | 'console_busy'
  | 'unroutable'
  | 'unavailable'
  | 'draining'
  | 'invalid_handshake'
  | 'unsupported_subprotocol'
  | 'upstream_failed'
  | 'console_security_failed'
  | 'client_security_refused';

/**
 * How opening a console's stream through its route ended; the only result values of the per-route
 * connects counter.
 */
export type RouteConnectResult = 'ok' | 'timeout' | 'upstream_failed';

/** The `route` label of a session without a routes file (route names are lowercase, digits, dashes). */
export const NO_ROUTE_LABEL = 'none';

/**
 * The proxy's Prometheus metrics, in a registry of its own (tests run several proxies in one
 * process). Labels are fixed small sets: never a token, fingerprint, instance or address. The
 * `route` label is a route name from the operator's routes file (a bounded set), never a host.
 */
export class ProxyMetrics {
  readonly registry = new Registry();
  readonly sessionsLive: Gauge;
  readonly connects: Counter<'result'>;
  readonly bytes: Counter<'direction'>;
  readonly connectSeconds: Histogram;
  readonly sessionsEnded: Counter<'reason'>;
  readonly legacyLookups: Counter<'result'>;
  readonly routeConnects: Counter<'route' | 'result'>;
  readonly routeConnectSeconds: Histogram<'route'>;
  readonly connectionsRefused: Counter<'reason'>;
  readonly vncSecurity: Counter<'scheme'>;
  readonly sessionWritesPending: Gauge;
  readonly sessionWritesRetried: Counter;
  readonly sessionWritesDropped: Counter<'reason'>;

  constructor(cellName: string) {
    this.registry.setDefaultLabels({ cell: cellName });
    collectDefaultMetrics({ register: this.registry, prefix: 'keyhole_proxy_process_' });
    this.sessionsLive = new Gauge({ name: 'keyhole_proxy_sessions_live', help: 'Console sessions open now', registers: [this.registry] });
    this.connectionsRefused = new Counter({
      name: 'keyhole_proxy_connections_refused_total',
      help: 'Connections refused before their request head was read, by the cap they were over (per_address, total)',
      labelNames: ['reason'],
      registers: [this.registry],
    });
    this.vncSecurity = new Counter({
      name: 'keyhole_proxy_vnc_security_total',
      help: 'VNC sessions whose RFB security the proxy negotiated with the hypervisor, by the scheme used (none, vencrypt)',
      labelNames: ['scheme'],
      registers: [this.registry],
    });
    this.sessionWritesPending = new Gauge({
      name: 'keyhole_proxy_session_writes_pending',
      help: 'Session records and ends not yet written to the cell database (queued, being written or waiting to be retried)',
      registers: [this.registry],
    });
    this.sessionWritesRetried = new Counter({
      name: 'keyhole_proxy_session_writes_retried_total',
      help: 'Session records and ends written again after the database did not take them',
      registers: [this.registry],
    });
    this.sessionWritesDropped = new Counter({
      name: 'keyhole_proxy_session_writes_dropped_total',
      help: 'Session records and ends given up, by reason (queue_full, refused by the database, shutdown past its deadline)',
      labelNames: ['reason'],
      registers: [this.registry],
    });
    this.connects = new Counter({
      name: 'keyhole_proxy_connects_total',
      help: 'Websocket connect attempts by result',
      labelNames: ['result'],
      registers: [this.registry],
    });
    this.bytes = new Counter({
      name: 'keyhole_proxy_bytes_total',
      help: 'Bytes proxied, by direction (to_client, to_console)',
      labelNames: ['direction'],
      registers: [this.registry],
    });
    this.connectSeconds = new Histogram({
      name: 'keyhole_proxy_connect_seconds',
      help: 'From the upgrade request to a connected console',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [this.registry],
    });
    this.sessionsEnded = new Counter({
      name: 'keyhole_proxy_sessions_ended_total',
      help: 'Console sessions ended, by close reason',
      labelNames: ['reason'],
      registers: [this.registry],
    });
    this.legacyLookups = new Counter({
      name: 'keyhole_proxy_legacy_lookups_total',
      help: 'Tokens missing from the cell database looked up in the legacy store, by result (served, miss, unavailable)',
      labelNames: ['result'],
      registers: [this.registry],
    });
    this.routeConnects = new Counter({
      name: 'keyhole_proxy_route_connects_total',
      help: `Console streams opened through each route (route name, or ${NO_ROUTE_LABEL} without a routes file), by result (ok, timeout, upstream_failed)`,
      labelNames: ['route', 'result'],
      registers: [this.registry],
    });
    this.routeConnectSeconds = new Histogram({
      name: 'keyhole_proxy_route_connect_seconds',
      help: "Time to open a console's stream through each route, from the dial to a connected stream",
      labelNames: ['route'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [this.registry],
    });
  }

  /** The session recorder's view of these metrics. */
  sessionWrites(): SessionWriteMetrics {
    return {
      setPending: (count) => this.sessionWritesPending.set(count),
      retried: (count) => this.sessionWritesRetried.inc(count),
      dropped: (reason, count) => this.sessionWritesDropped.inc({ reason }, count),
    };
  }
}
