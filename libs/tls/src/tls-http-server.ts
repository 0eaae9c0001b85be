import { RequestListener, Server } from 'node:http';
import type { Socket } from 'node:net';
import { Server as TlsServer, TLSSocket } from 'node:tls';
import { endWithJson } from '@keyhole/core';
import { CertificateReload, CertificateStore } from './certificate-store';

/** The first byte of every TLS connection: a handshake record (ClientHello). */
const TLS_HANDSHAKE_RECORD = 0x16;

/** The answer to plain HTTP on a TLS-only port (nginx answers it with 400 too). */
export const TLS_REQUIRED_ANSWER = {
  status: 400,
  body: { code: 'TLS_REQUIRED', message: 'This port serves HTTPS only: use https:// (wss:// for consoles)' },
} as const;

export interface TlsHttpServerOptions {
  /** Refuse plain HTTP (`400 TLS_REQUIRED`) instead of serving it. */
  only: boolean;
  /**
   * Longest wait (ms) from accept to the first byte, and for a TLS client to the end of its
   * handshake; past it the connection is closed.
   */
  handshakeTimeoutMs: number;
}

/**
 * Events besides http.Server's: `'plainRefused'` (plain HTTP on a TLS-only port) and
 * `'clientCertificateRefused'` (a client certificate the CA did not sign), for metrics.
 */
export type TlsHttpServerEvent = 'plainRefused' | 'clientCertificateRefused';

/**
 * An HTTP server that serves TLS and, unless `only`, plain HTTP on one port, told apart by the
 * first byte of each connection, as websockify does. Everything listening on `'connection'`
 * (Node's HTTP parser, the proxy's caps and deadlines) receives the connection as HTTP reads it: the
 * TLS socket, or the plain one. It is an http.Server, so Nest, Express and Fastify use it as
 * their own, `listen` works in cluster workers, and `close` stops it.
 *
 * Client certificates (when the store has a client CA) are asked for, not required, so that
 * callers with an API key still connect; one that is presented and does not verify against the CA
 * closes the connection as soon as the handshake ends, before any request is read.
 */
export class TlsHttpServer extends Server {
  /** Never listens: it only runs the TLS handshake of connections this server hands it. */
  private readonly tlsServer: TlsServer;

  constructor(
    readonly certificates: CertificateStore,
    private readonly tlsOptions: TlsHttpServerOptions,
    requestListener?: RequestListener,
  ) {
    super(requestListener);
    this.tlsServer = new TlsServer({
      ...certificates.secureContextOptions,
      requestCert: certificates.requestsClientCertificates,
      // Checked on 'secureConnection': a client without a certificate is let in (it may have an API key).
      rejectUnauthorized: false,
      handshakeTimeout: tlsOptions.handshakeTimeoutMs,
    });
    // A failed or timed-out handshake: the TLS server has closed the socket, nothing to answer.
    this.tlsServer.on('tlsClientError', () => undefined);
    this.tlsServer.on('secureConnection', (secure: TLSSocket) => this.admit(secure));
  }

  /**
   * Reads the certificate files again; new connections get the new certificate, live ones keep
   * theirs. Files that cannot be used leave the certificate in use.
   */
  reloadCertificates(): CertificateReload {
    const reload = this.certificates.reload();
    if (reload.ok) {
      this.tlsServer.setSecureContext(this.certificates.secureContextOptions);
    }
    return reload;
  }

  // The listening socket announces a new connection here first; it reaches the listeners once its
  // first byte says which protocol it speaks.
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event === 'connection') {
      this.classify(args[0] as Socket);
      return true;
    }
    // http.Server types its events by name; a symbol event passes through unchanged.
    return super.emit(event as string, ...args);
  }

  private classify(socket: Socket): void {
    const failed = (): void => {
      socket.destroy();
    };
    socket.on('error', failed);
    const deadline = setTimeout(failed, this.tlsOptions.handshakeTimeoutMs);
    deadline.unref();
    socket.once('close', () => clearTimeout(deadline));
    socket.once('readable', () => {
      const first = socket.read(1) as Buffer | null;
      if (first === null) {
        // Closed before a byte: nothing to serve.
        failed();
        return;
      }
      socket.unshift(first);
      // The first byte came in time; a TLS handshake has its own deadline.
      clearTimeout(deadline);
      if (first[0] === TLS_HANDSHAKE_RECORD) {
        this.tlsServer.emit('connection', socket);
        return;
      }
      if (this.tlsOptions.only) {
        super.emit('plainRefused');
        endWithJson(socket, TLS_REQUIRED_ANSWER.status, TLS_REQUIRED_ANSWER.body);
        // A client that does not read our answer must not hold the socket either.
        setTimeout(failed, 1_000).unref();
        return;
      }
      socket.off('error', failed);
      super.emit('connection', socket);
    });
  }

  private admit(secure: TLSSocket): void {
    if (this.certificates.requestsClientCertificates && !secure.authorized && Object.keys(secure.getPeerCertificate()).length > 0) {
      super.emit('clientCertificateRefused');
      secure.destroy();
      return;
    }
    super.emit('connection', secure);
  }
}
