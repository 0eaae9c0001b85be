/*
 * What the proxy reads from a websocket upgrade request before accepting it. Pure functions over
 * header values, so every rule is tested case by case without a server.
 */

/**
 * The presented token: the `token` query parameter of the request target (the last one wins, as
 * in Nova), else the last `token` cookie. Cookie parts that do not parse are skipped, so one
 * malformed cookie does not hide the token (Nova's cookie handling, for noVNC < 1.1).
 */
export function extractToken(requestTarget: string, cookieHeader: string | undefined): string | undefined {
  const queryStart = requestTarget.indexOf('?');
  if (queryStart !== -1) {
    const values = new URLSearchParams(requestTarget.slice(queryStart + 1)).getAll('token');
    const last = values[values.length - 1];
    if (last) {
      return last;
    }
  }
  if (!cookieHeader) {
    return undefined;
  }
  let found: string | undefined;
  for (const part of cookieHeader.split(';')) {
    const separator = part.indexOf('=');
    if (separator === -1) {
      continue;
    }
    if (part.slice(0, separator).trim() !== 'token') {
      continue;
    }
    let value = part.slice(separator + 1).trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) {
      value = value.slice(1, -1);
    }
    try {
      value = decodeURIComponent(value);
    } catch {
      continue;
    }
    if (value) {
      found = value;
    }
  }
  return found;
}

/**
 * Whether a client may be upgraded by a proxy that speaks the `binary` subprotocol only: yes when
 * it offers no subprotocol (a plain client) or offers `binary` among others (noVNC, websockify's
 * clients). A client that offers only others (`base64`, websockify's old text encoding) would get
 * bytes it cannot read: refused, as websockify refuses it. A malformed list is left to ws, which
 * refuses it as an invalid handshake.
 */
export function offersBinarySubprotocol(header: string | undefined): boolean {
  if (header === undefined) {
    return true;
  }
  return header.split(',').some((offered) => offered.trim() === 'binary');
}

export type OriginVerdict = { allowed: true } | { allowed: false; reason: string };

export interface OriginCheck {
  /** The Origin header, or undefined when the request has none. */
  origin: string | undefined;
  /** The Host header. */
  host: string | undefined;
  /** X-Forwarded-Proto, when a TLS-terminating proxy sets it. */
  forwardedProto: string | undefined;
  /** Configured extra hosts (lowercase, without ports). Read, never modified. */
  allowedOrigins: readonly string[];
  /** The token's access_url_base: its scheme is the one the page must have been loaded with. */
  accessUrlBase: string | null;
}

/**
 * Nova's cross-site websocket hijacking rules (CVE-2015-0259): no Origin header means a
 * non-browser client and no check; otherwise the origin's host must be the request's Host or one
 * of the allowed origins (ports ignored), and its scheme (or X-Forwarded-Proto) must match the
 * scheme of the token's access URL base, ws counting as http and wss as https. The allowed list is
 * never modified by a request (Nova bug 2158919).
 */
export function checkOrigin(check: OriginCheck): OriginVerdict {
  if (check.origin === undefined) {
    return { allowed: true };
  }
  let origin: URL;
  try {
    origin = new URL(check.origin);
  } catch {
    return { allowed: false, reason: 'Origin header not valid' };
  }
  const originHost = bareHostname(origin.hostname);
  const originScheme = (check.forwardedProto?.split(',')[0]?.trim() || origin.protocol.replace(/:$/, '')).toLowerCase();
  if (!originHost || !originScheme) {
    return { allowed: false, reason: 'Origin header not valid' };
  }
  const requestHost = check.host === undefined ? undefined : hostWithoutPort(check.host);
  if (originHost !== requestHost && !check.allowedOrigins.includes(originHost)) {
    return { allowed: false, reason: 'Origin header does not match this host' };
  }
  if (!check.accessUrlBase) {
    return { allowed: false, reason: 'No access URL base to check the origin protocol against' };
  }
  let baseScheme: string;
  try {
    baseScheme = new URL(check.accessUrlBase).protocol.replace(/:$/, '').toLowerCase();
  } catch {
    return { allowed: false, reason: 'No access URL base to check the origin protocol against' };
  }
  const expected = new Set([baseScheme]);
  if (baseScheme === 'ws') {
    expected.add('http');
  }
  if (baseScheme === 'wss') {
    expected.add('https');
  }
  if (baseScheme === 'http') {
    expected.add('ws');
  }
  if (baseScheme === 'https') {
    expected.add('wss');
  }
  if (!expected.has(originScheme)) {
    return { allowed: false, reason: 'Origin header protocol does not match this host' };
  }
  return { allowed: true };
}

/** `Host` header value without its port, lowercase, IPv6 without brackets. */
export function hostWithoutPort(host: string): string {
  const trimmed = host.trim().toLowerCase();
  if (trimmed.startsWith('[')) {
    const end = trimmed.indexOf(']');
    return end === -1 ? trimmed : trimmed.slice(1, end);
  }
  const colon = trimmed.lastIndexOf(':');
  // More than one colon without brackets: a bare IPv6 address, no port to strip.
  return colon !== -1 && trimmed.indexOf(':') === colon ? trimmed.slice(0, colon) : trimmed;
}

function bareHostname(hostname: string): string {
  const lower = hostname.toLowerCase();
  return lower.startsWith('[') && lower.endsWith(']') ? lower.slice(1, -1) : lower;
}
