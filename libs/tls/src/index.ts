// A server's own TLS, without a front proxy: certificate files checked at start and reloaded on
// SIGHUP, one port for TLS and (unless TLS-only) plain HTTP, client certificates, metrics; and the
// files of the console proxy's VeNCrypt client to hypervisors, checked and reloaded the same way.
export * from './certificate-store';
export * from './certificate-reloader';
export * from './client-certificate';
export * from './tls-http-server';
export * from './tls.metrics';
export * from './vencrypt-credentials';
