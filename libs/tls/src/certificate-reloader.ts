import { Logger } from '@nestjs/common';
import type { Registry } from 'prom-client';
import { TlsHttpServer } from './tls-http-server';
import { TlsMetrics } from './tls.metrics';
import type { VencryptCredentials } from './vencrypt-credentials';

/**
 * For a server that serves TLS: counts its refusals, shows its certificate's expiry, and reloads
 * the certificate, key and client CA on SIGHUP. Live connections keep the certificate they were
 * opened with; a reload that fails keeps the one in use and says why on an error line. Returns
 * the function that stops watching; null for a plain server (nothing to watch).
 */
export function watchCertificates(server: unknown, registry: Registry): (() => void) | null {
  if (!(server instanceof TlsHttpServer)) {
    return null;
  }
  const logger = new Logger('Tls');
  const metrics = TlsMetrics.of(registry);
  const store = server.certificates;
  const labels = { listener: store.settings.listener };
  metrics.certificateExpiry.set(labels, store.certificate.notAfterSeconds);
  metrics.reloads.inc({ ...labels, result: 'ok' }, 0);
  metrics.reloads.inc({ ...labels, result: 'failed' }, 0);
  const plainRefused = (): void => {
    metrics.plainRefused.inc(labels);
  };
  const clientCertificateRefused = (): void => {
    metrics.clientCertificatesRefused.inc(labels);
  };
  const handshakeCapped = (reason: string): void => {
    metrics.handshakesCapped.inc({ ...labels, reason });
  };
  server.on('plainRefused', plainRefused);
  server.on('handshakeCapped', handshakeCapped);
  server.on('clientCertificateRefused', clientCertificateRefused);
  logger.log(
    {
      listener: labels.listener,
      certificate: store.certificate,
      only: store.settings.only,
      clientCertificates: store.requestsClientCertificates,
    },
    'serving TLS',
  );
  const onHangup = (): void => {
    const reload = server.reloadCertificates();
    if (!reload.ok) {
      metrics.reloads.inc({ ...labels, result: 'failed' });
      logger.error({ listener: labels.listener, problems: reload.problems }, 'SIGHUP: TLS files refused, the previous certificate stays');
      return;
    }
    metrics.reloads.inc({ ...labels, result: 'ok' });
    metrics.certificateExpiry.set(labels, reload.certificate.notAfterSeconds);
    logger.log({ listener: labels.listener, certificate: reload.certificate }, 'SIGHUP: TLS certificate reloaded for new connections');
  };
  process.on('SIGHUP', onHangup);
  return () => {
    process.off('SIGHUP', onHangup);
    server.off('plainRefused', plainRefused);
    server.off('handshakeCapped', handshakeCapped);
    server.off('clientCertificateRefused', clientCertificateRefused);
  };
}

/**
 * Reloads the console proxy's VeNCrypt CA, client certificate and key on SIGHUP, as
 * `watchCertificates` does for a server's certificate: connections already open keep what they were
 * opened with, and files that cannot be used are refused with an error line (the previous ones
 * stay). Metrics carry `listener="vencrypt"`. Returns the function that stops watching.
 */
export function watchVencryptCredentials(credentials: VencryptCredentials, registry: Registry): () => void {
  const logger = new Logger('Tls');
  const metrics = TlsMetrics.of(registry);
  const labels = { listener: 'vencrypt' };
  const showExpiry = (notAfterSeconds: number | undefined): void => {
    if (notAfterSeconds === undefined) {
      metrics.certificateExpiry.remove(labels);
    } else {
      metrics.certificateExpiry.set(labels, notAfterSeconds);
    }
  };
  showExpiry(credentials.clientCertificate?.notAfterSeconds);
  metrics.reloads.inc({ ...labels, result: 'ok' }, 0);
  metrics.reloads.inc({ ...labels, result: 'failed' }, 0);
  const onHangup = (): void => {
    const reload = credentials.reload();
    if (!reload.ok) {
      metrics.reloads.inc({ ...labels, result: 'failed' });
      logger.error({ listener: labels.listener, problems: reload.problems }, 'SIGHUP: VeNCrypt files refused, the previous ones stay');
      return;
    }
    metrics.reloads.inc({ ...labels, result: 'ok' });
    showExpiry(reload.clientCertificate?.notAfterSeconds);
    logger.log(
      { listener: labels.listener, clientCertificate: reload.clientCertificate },
      'SIGHUP: VeNCrypt files reloaded for new connections',
    );
  };
  process.on('SIGHUP', onHangup);
  return () => {
    process.off('SIGHUP', onHangup);
  };
}
