import type { Duplex } from 'node:stream';
import { connect as connectTls, SecureContext } from 'node:tls';
import type { RawData, WebSocket } from 'ws';
import type { VncAuthScheme } from '@keyhole/config';
import { ByteQueue } from './byte-queue';

/** How the proxy negotiates RFB security with hypervisors; one per proxy. */
export interface VncSecurityOptions {
  /** Security types allowed with the hypervisor, in order of preference; never only `none` (nothing to negotiate). */
  schemes: readonly VncAuthScheme[];
  /** The TLS context of a VeNCrypt connection (CA, client certificate); read per connection, so a reload applies to the next one. */
  vencryptContext: () => SecureContext | undefined;
  /** Bound on the whole negotiation, from the console's banner to its SecurityResult (ms). */
  timeoutMs: number;
}

/** A negotiation that succeeded: the console's stream to pump (TLS for VeNCrypt) and the browser's bytes read past the exchange. */
export interface NegotiatedVnc {
  scheme: VncAuthScheme;
  console: Duplex;
  clientBytes: Buffer;
}

/**
 * Why a negotiation failed, and whose fault it was: the hypervisor's side (`console`: 1011) or the
 * browser's (`client`: 1008), or the browser leaving (`client gone`). `reason` is short enough for a
 * close frame and says nothing of the token; `detail` is for the log (hypervisor-supplied text is
 * reduced to printable ASCII).
 */
export class VncSecurityError extends Error {
  constructor(
    readonly side: 'console' | 'client' | 'client gone',
    readonly reason: string,
    readonly detail?: string,
  ) {
    super(detail === undefined ? reason : `${reason} (${detail})`);
    this.name = 'VncSecurityError';
  }
}

// RFC 6143 7.1.1 and 7.1.2; VeNCrypt (security type 19), version 0.2, subtype X509None.
const RFB_VERSION_LENGTH = 12;
const RFB_3_8 = 'RFB 003.008\n';
const SECURITY_TYPE: Record<VncAuthScheme, number> = { none: 1, vencrypt: 19 };
const SECURITY_NONE = 1;
const SECURITY_RESULT_OK = 0;
const VENCRYPT_X509_NONE = 260;
/** A failure reason longer than this is not read (Nova bug 2155052: it sized an unbounded read). */
const MAX_REASON_BYTES = 256;
/** Bytes a peer may send out of turn before the negotiation fails; far above any message of the exchange. */
const MAX_BUFFERED_BYTES = 64 * 1024;

/**
 * The RFB security proxy of one VNC session, as Nova's (nova/console/securityproxy/rfb.py): both
 * ends must speak RFB 3.8; the hypervisor's version is relayed; the browser is offered security
 * type None only; the hypervisor's type is the first of `schemes` it offers (never a silent
 * downgrade: a scheme not listed is never used); VeNCrypt is 0.2 with X509None only, then TLS with
 * the configured CA (no host name check, as in Nova) and client certificate; the hypervisor's
 * SecurityResult is relayed to the browser. Every length read is bounded, the whole exchange is
 * bounded by `timeoutMs`.
 *
 * On failure the browser is told in RFB where the protocol lets it (security types 0 with a reason,
 * or a failed SecurityResult), the console's stream is destroyed, and a VncSecurityError says why;
 * the caller closes the websocket. On success both are paused and ready for the byte pump.
 *
 * The websocket must be open and paused, its frames unread; `upstream` connected and unread.
 */
export async function negotiateVncSecurity(ws: WebSocket, upstream: Duplex, options: VncSecurityOptions): Promise<NegotiatedVnc> {
  const negotiation = new Negotiation(ws, upstream, options);
  try {
    return await negotiation.run();
  } finally {
    negotiation.detach();
  }
}

class Negotiation {
  private readonly fromClient = new ByteQueue(
    MAX_BUFFERED_BYTES,
    () => new VncSecurityError('client', 'browser sent too much during the RFB handshake'),
  );
  private fromConsole = new ByteQueue(
    MAX_BUFFERED_BYTES,
    () => new VncSecurityError('console', 'hypervisor sent too much during the RFB handshake'),
  );
  /** The stream the console's bytes come from: `upstream`, then the TLS socket over it. */
  private consoleStream: Duplex;
  /** What the browser waits for next: it decides how a failure is told (no security types, or a failed SecurityResult). */
  private clientAwaits: 'version' | 'types' | 'result' | 'nothing' = 'version';
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly ws: WebSocket,
    private readonly upstream: Duplex,
    private readonly options: VncSecurityOptions,
  ) {
    this.consoleStream = upstream;
  }

  async run(): Promise<NegotiatedVnc> {
    this.ws.on('message', this.onClientMessage);
    this.ws.on('close', this.onClientClose);
    this.listenToConsole(this.upstream);
    this.ws.resume();
    this.timer = setTimeout(this.onTimeout, this.options.timeoutMs);
    try {
      return await this.exchange();
    } catch (error) {
      const failure =
        error instanceof VncSecurityError ? error : new VncSecurityError('console', 'hypervisor connection failed', describe(error));
      this.tellClient(failure);
      this.consoleStream.destroy();
      this.upstream.destroy();
      throw failure;
    }
  }

  detach(): void {
    clearTimeout(this.timer);
    this.ws.off('message', this.onClientMessage);
    this.ws.off('close', this.onClientClose);
    this.ws.pause();
  }

  private async exchange(): Promise<NegotiatedVnc> {
    const version = await this.fromConsole.read(RFB_VERSION_LENGTH);
    if (version.toString('latin1') !== RFB_3_8) {
      throw new VncSecurityError('console', 'hypervisor does not speak RFB 3.8', printable(version));
    }
    this.ws.send(version);
    const clientVersion = await this.fromClient.read(RFB_VERSION_LENGTH);
    if (clientVersion.toString('latin1') !== RFB_3_8) {
      this.clientAwaits = 'nothing';
      throw new VncSecurityError('client', 'browser does not speak RFB 3.8', printable(clientVersion));
    }
    this.clientAwaits = 'types';
    this.upstream.write(clientVersion);

    const count = (await this.fromConsole.read(1))[0];
    if (count === 0) {
      throw new VncSecurityError('console', 'hypervisor refused the connection', await this.readReason());
    }
    const offered = [...(await this.fromConsole.read(count))];
    const scheme = this.options.schemes.find((candidate) => offered.includes(SECURITY_TYPE[candidate]));
    if (scheme === undefined) {
      // Security type 0 is invalid: the hypervisor ends the connection rather than wait.
      this.upstream.write(Buffer.from([0]));
      throw new VncSecurityError('console', 'hypervisor offers no allowed security type', `offered ${offered.join(',')}`);
    }

    // The browser gets None only; its client needs no certificate or password.
    this.ws.send(Buffer.from([1, SECURITY_NONE]));
    const choice = (await this.fromClient.read(1))[0];
    this.clientAwaits = 'result';
    if (choice !== SECURITY_NONE) {
      this.upstream.write(Buffer.from([0]));
      throw new VncSecurityError('client', 'browser must choose security type None', `chose ${choice}`);
    }

    this.upstream.write(Buffer.from([SECURITY_TYPE[scheme]]));
    if (scheme === 'vencrypt') {
      await this.vencrypt();
    }
    const result = await this.fromConsole.read(4);
    if (result.readUInt32BE(0) !== SECURITY_RESULT_OK) {
      throw new VncSecurityError('console', 'hypervisor refused the security handshake', await this.readReason());
    }
    this.ws.send(result);
    this.clientAwaits = 'nothing';

    const consoleRest = this.fromConsole.takeRest();
    this.stopListeningToConsole(this.consoleStream);
    this.consoleStream.pause();
    if (consoleRest.length > 0) {
      this.consoleStream.unshift(consoleRest);
    }
    return { scheme, console: this.consoleStream, clientBytes: this.fromClient.takeRest() };
  }

  /** VeNCrypt 0.2 with the X509None subtype, then TLS over the console's stream. */
  private async vencrypt(): Promise<void> {
    const [major, minor] = await this.fromConsole.read(2);
    if (major !== 0 || minor < 2) {
      this.upstream.write(Buffer.from([0, 0]));
      throw new VncSecurityError('console', 'hypervisor offers no VeNCrypt 0.2', `offered ${major}.${minor}`);
    }
    this.upstream.write(Buffer.from([0, 2]));
    if ((await this.fromConsole.read(1))[0] !== 0) {
      throw new VncSecurityError('console', 'hypervisor refused VeNCrypt 0.2');
    }
    const subtypeCount = (await this.fromConsole.read(1))[0];
    const subtypesBytes = await this.fromConsole.read(subtypeCount * 4);
    const subtypes: number[] = [];
    for (let offset = 0; offset < subtypesBytes.length; offset += 4) {
      subtypes.push(subtypesBytes.readUInt32BE(offset));
    }
    if (!subtypes.includes(VENCRYPT_X509_NONE)) {
      throw new VncSecurityError('console', 'hypervisor offers no VeNCrypt X509None', `offered ${subtypes.join(',')}`);
    }
    const choice = Buffer.alloc(4);
    choice.writeUInt32BE(VENCRYPT_X509_NONE);
    this.upstream.write(choice);
    if ((await this.fromConsole.read(1))[0] !== 1) {
      throw new VncSecurityError('console', 'hypervisor refused VeNCrypt X509None');
    }
    // Nothing may come between the accept and TLS: the hypervisor waits for our ClientHello.
    if (this.fromConsole.takeRest().length > 0) {
      throw new VncSecurityError('console', 'hypervisor sent bytes before TLS');
    }
    this.stopListeningToConsole(this.upstream);
    this.upstream.pause();
    const secureContext = this.options.vencryptContext();
    if (secureContext === undefined) {
      throw new VncSecurityError('console', 'no VeNCrypt credentials configured');
    }
    const tls = connectTls({
      socket: this.upstream,
      secureContext,
      rejectUnauthorized: true,
      // As Nova: the certificate must chain to the CA, whatever name it carries (a token names an address).
      checkServerIdentity: () => undefined,
    });
    this.consoleStream = tls;
    // The raw stream is the TLS socket's now; it ends with it. A TLS error after the first one (the
    // one that failed the handshake) must not go unhandled; the pump listens for its own.
    this.upstream.on('error', ignore);
    tls.on('error', ignore);
    tls.once('close', () => this.upstream.destroy());
    this.fromConsole = new ByteQueue(
      MAX_BUFFERED_BYTES,
      () => new VncSecurityError('console', 'hypervisor sent too much during the RFB handshake'),
    );
    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error): void => {
        tls.off('secureConnect', onConnect);
        reject(tlsFailure(error));
      };
      const onConnect = (): void => {
        tls.off('error', onError);
        resolve();
      };
      tls.once('secureConnect', onConnect);
      tls.once('error', onError);
    });
    // With TLS 1.3 a hypervisor that refuses our certificate (or its absence) says so after our
    // side of the handshake is done: on the first read, the SecurityResult's, with an alert or by
    // closing (QEMU closes).
    this.listenToConsole(
      tls,
      (error) => tlsFailure(error),
      () => new VncSecurityError('console', 'hypervisor refused the TLS handshake', 'closed before its SecurityResult'),
    );
  }

  /** A failure reason (u32 length, text) from the hypervisor, read only when short, for the log. */
  private async readReason(): Promise<string> {
    const length = (await this.fromConsole.read(4)).readUInt32BE(0);
    if (length > MAX_REASON_BYTES) {
      return `a reason of ${length} bytes, not read`;
    }
    return printable(await this.fromConsole.read(length));
  }

  /** Tells the browser, where RFB lets it, that security failed; the caller closes the websocket. */
  private tellClient(failure: VncSecurityError): void {
    if (failure.side === 'client gone' || this.ws.readyState !== this.ws.OPEN) {
      return;
    }
    const reason = Buffer.from(failure.reason, 'latin1');
    const length = Buffer.alloc(4);
    length.writeUInt32BE(reason.length);
    if (this.clientAwaits === 'types') {
      this.ws.send(Buffer.concat([Buffer.from([0]), length, reason]));
    } else if (this.clientAwaits === 'result') {
      this.ws.send(Buffer.concat([Buffer.from([0, 0, 0, 1]), length, reason]));
    }
    this.clientAwaits = 'nothing';
  }

  private listenToConsole(
    stream: Duplex,
    mapError: (error: Error) => VncSecurityError = consoleFailure,
    ended: () => VncSecurityError = () => new VncSecurityError('console', 'hypervisor closed during the RFB handshake'),
  ): void {
    this.onConsoleError = (error: Error) => this.fromConsole.fail(mapError(error));
    this.onConsoleEnd = () => this.fromConsole.fail(ended());
    stream.on('data', this.onConsoleData);
    stream.on('error', this.onConsoleError);
    stream.on('end', this.onConsoleEnd);
    stream.on('close', this.onConsoleEnd);
    stream.resume();
  }

  private stopListeningToConsole(stream: Duplex): void {
    stream.off('data', this.onConsoleData);
    stream.off('error', this.onConsoleError);
    stream.off('end', this.onConsoleEnd);
    stream.off('close', this.onConsoleEnd);
  }

  private readonly onConsoleData = (chunk: Buffer): void => this.fromConsole.push(chunk);
  private onConsoleError = (error: Error): void => this.fromConsole.fail(consoleFailure(error));
  private onConsoleEnd = (): void => undefined;

  // binaryType is 'nodebuffer': a message is one Buffer.
  private readonly onClientMessage = (data: RawData): void => this.fromClient.push(data as Buffer);
  private readonly onClientClose = (): void => {
    const gone = new VncSecurityError('client gone', 'client closed');
    this.fromClient.fail(gone);
    this.fromConsole.fail(gone);
  };

  private readonly onTimeout = (): void => {
    // Whose turn it was: a browser that does not answer is its problem, a silent hypervisor is ours.
    const side = this.fromClient.waiting ? 'client' : 'console';
    const timedOut = new VncSecurityError(side, 'RFB security negotiation timed out', `after ${this.options.timeoutMs} ms`);
    this.fromClient.fail(timedOut);
    this.fromConsole.fail(timedOut);
    // A TLS handshake in progress waits on neither queue.
    this.consoleStream.destroy(timedOut);
  };
}

function ignore(): void {}

function consoleFailure(error: Error): VncSecurityError {
  return new VncSecurityError('console', 'hypervisor connection failed', describe(error));
}

/** Certificate verification codes (OpenSSL's X509 errors as Node names them). */
const CERTIFICATE_NOT_TRUSTED = /^(CERT_|UNABLE_TO_|SELF_SIGNED_|DEPTH_ZERO_|INVALID_CA|PATH_LENGTH_|ERR_TLS_CERT_)/;

/** A TLS failure towards the hypervisor, by what an operator has to fix. */
function tlsFailure(error: Error): VncSecurityError {
  if (error instanceof VncSecurityError) {
    return error;
  }
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && CERTIFICATE_NOT_TRUSTED.test(code)) {
    return new VncSecurityError('console', 'hypervisor certificate not trusted', code);
  }
  if (typeof code === 'string' && /ALERT|SSL|TLS/.test(code)) {
    return new VncSecurityError('console', 'hypervisor refused the TLS handshake', code);
  }
  return new VncSecurityError('console', 'TLS to the hypervisor failed', describe(error));
}

function describe(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : error instanceof Error ? error.message.slice(0, 120) : 'error';
}

/** Hypervisor- or browser-supplied bytes as printable ASCII, for a log line. */
function printable(bytes: Buffer): string {
  return bytes
    .toString('latin1')
    .replace(/[^\x20-\x7e]/g, '?')
    .slice(0, MAX_REASON_BYTES);
}
