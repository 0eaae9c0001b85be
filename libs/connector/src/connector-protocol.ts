import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { isHostname } from '@keyhole/core';

/*
 * The connector protocol, spoken on the connector's UNIX socket (one request per connection):
 *
 *   client -> connector   'K' 'H' 'C'   magic, 3 bytes
 *                         0x01          version, 1 byte
 *                         LEN           length of the destination, 1 byte, 1-255
 *                         DESTINATION   LEN bytes of ASCII `host:port`: a host name, an IPv4 address,
 *                                       or an IPv6 address in brackets ([fd00::1]:5900); port 1-65535
 *                                       in decimal without leading zeros
 *   connector -> client   STATUS        1 byte, before any byte of the destination (ConnectorStatus)
 *
 * After status 0 (ok) the connection carries raw bytes both ways, half-closes included, until both
 * sides have ended. Any other status is followed by the connector closing the connection. A header
 * is at most 260 bytes and must be complete within the connector's header timeout; the connector
 * reads no further than the header before it has dialled, and bytes a client sends early (after the
 * header, before the status) are delivered to the destination, not lost.
 */

/** 'KHC': the first bytes of every request; anything else is not a keyhole client. */
export const CONNECTOR_MAGIC = Buffer.from('KHC', 'latin1');
export const CONNECTOR_PROTOCOL_VERSION = 1;
/** Magic, version and length byte. */
const PREFIX_BYTES = CONNECTOR_MAGIC.length + 2;
/** The longest destination a length byte can announce. */
export const MAX_DESTINATION_BYTES = 255;
export const MAX_HEADER_BYTES = PREFIX_BYTES + MAX_DESTINATION_BYTES;

/** The connector's one-byte answer to a request. Values are wire format: never renumber. */
export const ConnectorStatus = {
  ok: 0,
  notAllowed: 1,
  connectFailed: 2,
  timeout: 3,
  malformed: 4,
  unsupportedVersion: 5,
} as const;
export type ConnectorStatusName = keyof typeof ConnectorStatus;

/** How a status reads in logs, metric labels and close reasons (`connector refused: not allowed`). */
export const STATUS_TEXT = {
  ok: 'ok',
  notAllowed: 'not allowed',
  connectFailed: 'connect failed',
  timeout: 'timeout',
  malformed: 'malformed',
  unsupportedVersion: 'unsupported version',
} as const satisfies Record<ConnectorStatusName, string>;

/** The status name of a byte from the wire, or undefined for a value this version does not know. */
export function statusName(byte: number): ConnectorStatusName | undefined {
  return (Object.keys(ConnectorStatus) as ConnectorStatusName[]).find((name) => ConnectorStatus[name] === byte);
}

export interface Destination {
  /** A host name, an IPv4 address, or an IPv6 address (without brackets). */
  host: string;
  port: number;
}

/** `host:port` as the header carries it (IPv6 in brackets). */
export function formatDestination({ host, port }: Destination): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The request header for `destination`; throws if it cannot be expressed (a bad host or port). */
export function encodeHeader(destination: Destination): Buffer {
  const text = formatDestination(destination);
  if (parseDestination(text) === undefined) {
    throw new RangeError(`not a destination the connector protocol can carry: ${JSON.stringify(text.slice(0, 300))}`);
  }
  return Buffer.concat([CONNECTOR_MAGIC, Buffer.from([CONNECTOR_PROTOCOL_VERSION, text.length]), Buffer.from(text, 'latin1')]);
}

/** Parses `host:port`; undefined when it is not exactly a valid host and port. */
export function parseDestination(text: string): Destination | undefined {
  if (text.length === 0 || text.length > MAX_DESTINATION_BYTES) {
    return undefined;
  }
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^[\]:]+)):([1-9][0-9]{0,4})$/.exec(text);
  if (!match) {
    return undefined;
  }
  const port = Number(match[3]);
  if (port > 65535) {
    return undefined;
  }
  if (match[1] !== undefined) {
    return isIP(match[1]) === 6 ? { host: match[1], port } : undefined;
  }
  const host = match[2];
  return isIP(host) === 4 || isHostname(host) ? { host, port } : undefined;
}

/** Why a header was refused: the status to answer and a short reason for the log. */
export interface HeaderRefusal {
  status: 'malformed' | 'unsupportedVersion';
  reason: string;
}

export type HeaderResult =
  { done: true; destination: Destination; rest: Buffer } | { done: true; refusal: HeaderRefusal } | { done: false };

/**
 * Looks at the bytes received so far. Refuses as soon as they cannot be the start of a header
 * (wrong magic from the first byte on), so a stranger is not kept waiting for the timeout.
 * `rest` is what followed the header in the same reads.
 */
export function parseHeader(received: Buffer): HeaderResult {
  const magicBytes = Math.min(received.length, CONNECTOR_MAGIC.length);
  if (!received.subarray(0, magicBytes).equals(CONNECTOR_MAGIC.subarray(0, magicBytes))) {
    return { done: true, refusal: { status: 'malformed', reason: 'bad magic' } };
  }
  if (received.length > CONNECTOR_MAGIC.length && received[CONNECTOR_MAGIC.length] !== CONNECTOR_PROTOCOL_VERSION) {
    return { done: true, refusal: { status: 'unsupportedVersion', reason: `version ${received[CONNECTOR_MAGIC.length]}` } };
  }
  if (received.length < PREFIX_BYTES) {
    return { done: false };
  }
  const length = received[PREFIX_BYTES - 1];
  if (length === 0) {
    return { done: true, refusal: { status: 'malformed', reason: 'empty destination' } };
  }
  if (received.length < PREFIX_BYTES + length) {
    return { done: false };
  }
  const raw = received.subarray(PREFIX_BYTES, PREFIX_BYTES + length);
  // Printable ASCII only: the text goes into log lines.
  const destination = raw.every((byte) => byte > 0x20 && byte < 0x7f) ? parseDestination(raw.toString('latin1')) : undefined;
  if (destination === undefined) {
    return { done: true, refusal: { status: 'malformed', reason: 'bad destination' } };
  }
  return { done: true, destination, rest: received.subarray(PREFIX_BYTES + length) };
}

/**
 * Reads one request header from `socket` within `timeoutMs`. Bytes after the header are put back
 * into the socket, which is left paused. Resolves with the destination or the refusal; the timeout
 * and a socket that ends first are refusals too (malformed).
 */
export function readHeader(socket: Duplex, timeoutMs: number): Promise<{ destination: Destination } | { refusal: HeaderRefusal }> {
  return new Promise((resolve) => {
    let received: Buffer = Buffer.alloc(0);
    const finish = (result: { destination: Destination } | { refusal: HeaderRefusal }) => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onEnd);
      socket.off('close', onEnd);
      socket.pause();
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
      const result = parseHeader(received);
      if (!result.done) {
        return;
      }
      if ('refusal' in result) {
        finish({ refusal: result.refusal });
        return;
      }
      socket.pause();
      if (result.rest.length > 0) {
        socket.unshift(result.rest);
      }
      finish({ destination: result.destination });
    };
    const onEnd = () => finish({ refusal: { status: 'malformed', reason: `header incomplete (${received.length} bytes)` } });
    const timer = setTimeout(
      () => finish({ refusal: { status: 'malformed', reason: `header not complete within ${timeoutMs} ms` } }),
      timeoutMs,
    );
    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('error', onEnd);
    // Destroyed meanwhile (a connector stopping): no timer must outlive the connection.
    socket.once('close', onEnd);
    socket.resume();
  });
}
