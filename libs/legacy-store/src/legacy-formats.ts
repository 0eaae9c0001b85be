import { isIP } from 'node:net';
import { consoleHostSchema, instanceUuidSchema, portSchema } from '@keyhole/core';

/*
 * The two value formats of legacy Redis token stores, parsed and written here and nowhere else.
 * Everything read from Redis is untrusted: each field is validated, sizes are bounded, and a bad
 * value is reported as `malformed` with the field at fault (never with the value, which may hold a
 * token or an address).
 */

export type LegacyFormat = 'nova' | 'websockify';

/** What a legacy token authorizes, whichever format it came from. */
export interface LegacyAuthorization {
  /** null in websockify's format, which has no instance */
  instanceUuid: string | null;
  /** null in websockify's format, whose consoles are VNC (WEBSOCKIFY_CONSOLE_TYPE) */
  consoleType: string | null;
  /** Hostname or IP address; IPv6 without brackets. */
  host: string;
  /** 1..65535 */
  port: number;
  internalAccessPath: string | null;
  /**
   * Nova's `access_url` without its query and fragment (which carry the token), e.g.
   * `http://proxy.example:6080/vnc_auto.html`; enough for the origin check. null when absent.
   */
  accessUrlBase: string | null;
  /** Epoch seconds when the key expires (from Redis PTTL); null if the key has no TTL. */
  expiresAt: number | null;
}

/** Stands for "no instance" where a websockify token (its format has none) needs one: session rows, imported tokens. */
export const NO_INSTANCE_UUID = '00000000-0000-0000-0000-000000000000';

/** The console type of a websockify token: its format has none, its consoles are VNC. */
export const WEBSOCKIFY_CONSOLE_TYPE = 'novnc';

/** Values larger than this are ignored without parsing: a real one is a few hundred bytes. */
export const MAX_LEGACY_VALUE_BYTES = 64 * 1024;

/** Console types and access paths end up in logs and (for the path) in an HTTP request line. */
const PRINTABLE = /^[\x20-\x7e]*$/;
const MAX_CONSOLE_TYPE_LENGTH = 255;
/** Nova's `internal_access_path` column is a String(255). */
const MAX_INTERNAL_ACCESS_PATH_LENGTH = 255;
const MAX_ACCESS_URL_LENGTH = 2048;
const ACCESS_URL_SCHEMES = ['http:', 'https:', 'ws:', 'wss:'];

export type LegacyValue =
  | { kind: 'authorization'; authorization: Omit<LegacyAuthorization, 'expiresAt'> }
  /** Nova's per-instance list (a JSON array of tokens) found where a token was expected. */
  | { kind: 'instance-list' }
  | { kind: 'malformed'; field: string; reason: string };

function malformed(field: string, reason: string): LegacyValue {
  return { kind: 'malformed', field, reason };
}

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

/** Parses a raw Redis value stored under `token` (the token without the key prefix). */
export function parseLegacyValue(format: LegacyFormat, raw: Buffer, token: string): LegacyValue {
  // Checked before decoding or parsing: the size of what we parse is bounded whatever Redis holds.
  if (raw.length > MAX_LEGACY_VALUE_BYTES) {
    return malformed('value', 'larger than 64 KiB');
  }
  let text: string;
  try {
    text = STRICT_UTF8.decode(raw);
  } catch {
    return malformed('value', 'not UTF-8');
  }
  return format === 'nova' ? parseNovaValue(text, token) : parseWebsockifyValue(text);
}

/*
 * Nova consoleauth (Rocky..Stein, `nova/consoleauth/manager.py`):
 *
 *   key   = keyPrefix + raw token (a UUID4)
 *   value = JSON object {"token", "instance_uuid", "console_type", "host", "port",
 *           "internal_access_path", "access_url", "last_activity_at"}
 *   TTL   = the key's Redis TTL
 *
 * `port` is an int (or a numeric string), `internal_access_path` and `access_url` may be null,
 * `last_activity_at` (float epoch seconds) was never read and is ignored. Next to the tokens,
 * keyPrefix + instance UUID holds a JSON array of that instance's tokens. Tokens are UUIDs too, so
 * the two kinds of keys are told apart by their value: an array is a list, an object a token.
 */
function parseNovaValue(text: string, token: string): LegacyValue {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return malformed('value', 'not JSON');
  }
  if (Array.isArray(data)) {
    return { kind: 'instance-list' };
  }
  if (!isRecord(data)) {
    return malformed('value', 'not a JSON object');
  }

  // Nova always wrote the key's own token here; a different one means the entry is not what it seems.
  if (data.token !== undefined && data.token !== token) {
    return malformed('token', 'differs from the key');
  }

  const instance = instanceUuidSchema.safeParse(data.instance_uuid);
  if (!instance.success) {
    return malformed('instance_uuid', 'not a UUID');
  }

  const consoleType = data.console_type;
  if (
    typeof consoleType !== 'string' ||
    consoleType.length === 0 ||
    consoleType.length > MAX_CONSOLE_TYPE_LENGTH ||
    !PRINTABLE.test(consoleType)
  ) {
    return malformed('console_type', 'not a printable string of 1..255 characters');
  }

  const host = parseHost(data.host);
  if (host === undefined) {
    return malformed('host', 'not a hostname or IP address');
  }

  const port = parsePort(data.port);
  if (port === undefined) {
    return malformed('port', 'not an integer 1..65535');
  }

  let internalAccessPath: string | null = null;
  if (data.internal_access_path !== undefined && data.internal_access_path !== null) {
    const path = data.internal_access_path;
    // It is sent upstream in an HTTP request line: no CR/LF or other control characters.
    if (typeof path !== 'string' || path.length > MAX_INTERNAL_ACCESS_PATH_LENGTH || !PRINTABLE.test(path)) {
      return malformed('internal_access_path', 'not a printable string of at most 255 characters');
    }
    internalAccessPath = path;
  }

  let accessUrlBase: string | null = null;
  if (data.access_url !== undefined && data.access_url !== null) {
    const base = accessUrlBaseOf(data.access_url);
    if (base === undefined) {
      return malformed('access_url', 'not an http(s) or ws(s) URL');
    }
    accessUrlBase = base;
  }

  return {
    kind: 'authorization',
    authorization: { instanceUuid: instance.data, consoleType, host, port, internalAccessPath, accessUrlBase },
  };
}

/*
 * websockify TokenRedis (`websockify/token_plugins.py`):
 *
 *   key   = keyPrefix + token (websockify's `namespace:` belongs in keyPrefix)
 *   value = JSON {"host": "HOST:PORT"}  or  plain HOST:PORT
 *
 * websockify strips surrounding whitespace and takes the JSON form when the value starts with `{`.
 * It splits on `:` and so cannot carry IPv6; keyhole reads and writes IPv6 as `[::1]:5900`. No
 * instance, console type, path or URL: the TTL, if any, is the operator's EXPIRE.
 */
function parseWebsockifyValue(text: string): LegacyValue {
  const value = text.trim();
  let target = value;
  if (value.startsWith('{')) {
    let data: unknown;
    try {
      data = JSON.parse(value);
    } catch {
      return malformed('value', 'not JSON');
    }
    if (!isRecord(data)) {
      return malformed('value', 'not a JSON object');
    }
    if (typeof data.host !== 'string') {
      return malformed('host', 'missing');
    }
    target = data.host;
  }
  const parsed = parseHostPort(target);
  if ('field' in parsed) {
    return malformed(parsed.field, parsed.reason);
  }
  return {
    kind: 'authorization',
    authorization: {
      instanceUuid: null,
      consoleType: null,
      host: parsed.host,
      port: parsed.port,
      internalAccessPath: null,
      accessUrlBase: null,
    },
  };
}

/** `HOST:PORT` or `[IPV6]:PORT`. */
function parseHostPort(target: string): { host: string; port: number } | { field: string; reason: string } {
  let hostText: string;
  let portText: string;
  const bracketed = /^\[([^\]]*)\]:([^:]*)$/.exec(target);
  if (bracketed) {
    hostText = bracketed[1];
    portText = bracketed[2];
    if (isIP(hostText) !== 6) {
      return { field: 'host', reason: 'brackets around something else than IPv6' };
    }
  } else {
    const parts = target.split(':');
    if (parts.length !== 2) {
      return { field: 'value', reason: 'not HOST:PORT' };
    }
    [hostText, portText] = parts;
  }
  const host = parseHost(hostText);
  if (host === undefined) {
    return { field: 'host', reason: 'not a hostname or IP address' };
  }
  const port = parsePort(portText);
  if (port === undefined) {
    return { field: 'port', reason: 'not an integer 1..65535' };
  }
  return { host, port };
}

/** A hostname or IP; IPv6 may come bracketed and is returned without brackets. */
function parseHost(value: unknown): string | undefined {
  if (typeof value !== 'string') {
    return undefined;
  }
  const unbracketed = /^\[(.*)\]$/.exec(value);
  const host = unbracketed && isIP(unbracketed[1]) === 6 ? unbracketed[1] : value;
  const parsed = consoleHostSchema.safeParse(host);
  return parsed.success ? parsed.data : undefined;
}

/** An integer, or a string of 1..5 digits (Nova's port was sometimes a string). */
function parsePort(value: unknown): number | undefined {
  let port: unknown = value;
  if (typeof value === 'string') {
    if (!/^[0-9]{1,5}$/.test(value)) {
      return undefined;
    }
    port = Number(value);
  }
  const parsed = portSchema.safeParse(port);
  return parsed.success ? parsed.data : undefined;
}

/** Scheme, host, port and path of an access URL: no user info, query or fragment (the token lives there). */
function accessUrlBaseOf(value: unknown): string | undefined {
  if (typeof value !== 'string' || value.length > MAX_ACCESS_URL_LENGTH) {
    return undefined;
  }
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return undefined;
  }
  if (!ACCESS_URL_SCHEMES.includes(url.protocol) || url.hostname === '') {
    return undefined;
  }
  return `${url.protocol}//${url.host}${url.pathname}`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** What keyhole dual-writes: one of its own tokens, already validated where it was issued. */
export interface LegacyWrite {
  instanceUuid: string;
  consoleType: string;
  host: string;
  port: number;
  internalAccessPath: string | null;
  accessUrl: string;
}

/** A Nova consoleauth token value, fields in consoleauth's order. */
export function novaTokenValue(token: string, authorization: LegacyWrite, nowMs: number): string {
  return JSON.stringify({
    token,
    instance_uuid: authorization.instanceUuid,
    console_type: authorization.consoleType,
    host: authorization.host,
    port: authorization.port,
    internal_access_path: authorization.internalAccessPath,
    access_url: authorization.accessUrl,
    // consoleauth stored time.time() (float seconds) and never read it back.
    last_activity_at: nowMs / 1000,
  });
}

/** A websockify TokenRedis value: `{"host": "HOST:PORT"}`, IPv6 in brackets. */
export function websockifyTokenValue(host: string, port: number): string {
  return JSON.stringify({ host: `${isIP(host) === 6 ? `[${host}]` : host}:${port}` });
}
