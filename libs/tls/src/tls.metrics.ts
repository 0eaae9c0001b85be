import { Counter, Gauge, Registry } from 'prom-client';

/**
 * A server's TLS in numbers. Gauges keep the earliest value across proxy workers (their supervisor
 * sums counters and takes the minimum of these), so an alert on expiry sees the worker that lags.
 */
export class TlsMetrics {
  private static readonly byRegistry = new WeakMap<Registry, TlsMetrics>();

  /** The metrics in `registry`, made on first use (a proxy has a TLS server and a VeNCrypt client). */
  static of(registry: Registry): TlsMetrics {
    let metrics = TlsMetrics.byRegistry.get(registry);
    if (!metrics) {
      metrics = new TlsMetrics(registry);
      TlsMetrics.byRegistry.set(registry, metrics);
    }
    return metrics;
  }

  readonly certificateExpiry: Gauge<'listener'>;
  readonly reloads: Counter<'listener' | 'result'>;
  readonly plainRefused: Counter<'listener'>;
  readonly clientCertificatesRefused: Counter<'listener'>;
  readonly handshakesCapped: Counter<'listener' | 'reason'>;

  private constructor(registry: Registry) {
    this.certificateExpiry = new Gauge({
      name: 'keyhole_tls_certificate_expiry_seconds',
      help: 'End of validity (epoch seconds) of the certificate new connections are served with (listener vencrypt: the client certificate the console proxy presents to hypervisors)',
      labelNames: ['listener'],
      aggregator: 'min',
      registers: [registry],
    });
    this.reloads = new Counter({
      name: 'keyhole_tls_reloads_total',
      help: "Certificate reloads on SIGHUP, by result (ok, or failed: the previous certificate stays); listener vencrypt: the console proxy's VeNCrypt CA and client certificate",
      labelNames: ['listener', 'result'],
      registers: [registry],
    });
    this.plainRefused = new Counter({
      name: 'keyhole_tls_plain_requests_refused_total',
      help: 'Plain HTTP connections refused with 400 TLS_REQUIRED on a TLS-only port',
      labelNames: ['listener'],
      registers: [registry],
    });
    this.clientCertificatesRefused = new Counter({
      name: 'keyhole_tls_client_certificates_refused_total',
      help: 'TLS connections closed because their client certificate does not verify against the client CA',
      labelNames: ['listener'],
      registers: [registry],
    });
    this.handshakesCapped = new Counter({
      name: 'keyhole_tls_connections_capped_total',
      help: 'Connections closed at accept: too many still before HTTP (first byte or TLS handshake), from one address or in all',
      labelNames: ['listener', 'reason'],
      registers: [registry],
    });
  }
}
