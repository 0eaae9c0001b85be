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
  /**
   * Most connections not yet handed to HTTP (waiting for their first byte, or in their TLS
   * handshake) from one peer address and in all; one more is closed at once. The proxy's caps on
   * unauthenticated connections count from the hand-over; these bound the time before it. Unset =
   * no cap.
   */
  handshakeCaps?: { perAddress: number; total: number };
}

/** Why a connection was closed before its first byte was read (a metric label). */
export type HandshakeCapReason = 'per_address' | 'total';

/**
 * Events besides http.Server's, for metrics: `'plainRefused'` (plain HTTP on a TLS-only port),
 * `'clientCertificateRefused'` (a client certificate the CA did not sign) and
 * `'handshakeCapped'` (with its HandshakeCapReason: over `handshakeCaps`).
 */
export type TlsHttpServerEvent = 'plainRefused' | 'clientCertificateRefused' | 'handshakeCapped';

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
  /** Connections before HTTP: their peer address by `address|port` (a TLS socket and the TCP one under it share it). */
  private readonly beforeHttp = new Map<string, string>();
  private readonly beforeHttpByAddress = new Map<string, number>();

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
    // A handshake that failed or timed out: nothing to answer. With a listener here, closing the
    // socket is ours to do (a timed-out one would stay open).
    this.tlsServer.on('tlsClientError', (_error: Error, secure: TLSSocket) => {
      this.leave(secure);
      secure.destroy();
    });
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
    const release = this.enter(socket);
    if (!release) {
      failed();
      return;
    }
    const timeoutMs = this.tlsOptions.handshakeTimeoutMs;
    const deadline = setTimeout(failed, timeoutMs);
    deadline.unref();
    socket.once('close', () => {
      clearTimeout(deadline);
      release();
    });
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
        // The TLS socket takes this one over (its 'close' may never come): counted until the
        // handshake ends, or at most until its deadline has passed, whichever is first.
        setTimeout(release, timeoutMs + 1_000).unref();
        this.tlsServer.emit('connection', socket);
        return;
      }
      release();
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

  /**
   * Counts a connection until it is handed to HTTP; returns the (idempotent) release, or null
   * when it is over a cap (the refusal is counted).
   */
  private enter(socket: Socket): (() => void) | null {
    const caps = this.tlsOptions.handshakeCaps;
    const address = socket.remoteAddress ?? '';
    const key = connectionKey(socket);
    // A stale entry of the same address and port: its connection is over.
    this.leaveByKey(key);
    const fromAddress = this.beforeHttpByAddress.get(address) ?? 0;
    if (caps) {
      const reason: HandshakeCapReason | null =
        fromAddress >= caps.perAddress ? 'per_address' : this.beforeHttp.size >= caps.total ? 'total' : null;
      if (reason !== null) {
        super.emit('handshakeCapped', reason);
        return null;
      }
    }
    this.beforeHttp.set(key, address);
    this.beforeHttpByAddress.set(address, fromAddress + 1);
    return () => this.leaveByKey(key);
  }

  /** Stops counting a TLS connection (its TCP socket and it share address and port). */
  private leave(secure: TLSSocket): void {
    this.leaveByKey(connectionKey(secure));
  }

  private leaveByKey(key: string): void {
    const address = this.beforeHttp.get(key);
    if (address === undefined) {
      return;
    }
    this.beforeHttp.delete(key);
    const left = (this.beforeHttpByAddress.get(address) ?? 1) - 1;
    if (left > 0) {
      this.beforeHttpByAddress.set(address, left);
    } else {
      this.beforeHttpByAddress.delete(address);
    }
  }

  private admit(secure: TLSSocket): void {
    this.leave(secure);
    if (this.certificates.requestsClientCertificates && !secure.authorized && Object.keys(secure.getPeerCertificate()).length > 0) {
      super.emit('clientCertificateRefused');
      secure.destroy();
      return;
    }
    super.emit('connection', secure);
  }
}

function connectionKey(socket: Socket | TLSSocket): string {
  return `${socket.remoteAddress ?? ''}|${socket.remotePort ?? ''}`;
}
