import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import { consoleHostSchema, instanceUuidSchema, isPlausibleToken, portSchema } from '@keyhole/core';
import { parsePickledString, pickleString } from './pickle-string.parser';

/*
 * The two value formats of legacy Redis token stores, parsed and written here and nowhere else.
 * Everything read from Redis is untrusted: each field is validated, sizes are bounded, and a bad
 * value is reported as `malformed` with the field at fault (never with the value, which may hold a
 * token or an address).
 */

/**
 * `nova`: raw token keys and plain JSON values (see parseNovaValue); `websockify`: TokenRedis;
 * `oslo-cache-redis`: what consoleauth wrote through oslo.cache's `dogpile.cache.redis` backend
 * with dogpile.cache >= 1.1 (see parseOsloCacheValue).
 */
export type LegacyFormat = 'nova' | 'websockify' | 'oslo-cache-redis';

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
export function parseLegacyValue(format: 'nova' | 'websockify', raw: Buffer, token: string): LegacyValue {
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
  return parseNovaTokenDict(data, token);
}

/** consoleauth's token dict (whichever store it came from), stored for `token`. */
function parseNovaTokenDict(data: Record<string, unknown>, token: string): LegacyValue {
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

/*
 * Nova consoleauth (Newton..Stein) through oslo.cache with `[cache] backend = dogpile.cache.redis`
 * and dogpile.cache >= 1.1 (checked against oslo.cache 3.2.0 and dogpile.cache 1.1.8, see
 * test/fixtures/legacy/generate-oslo-cache.py):
 *
 *   key   = keyPrefix + sha1(token) in lowercase hex: oslo.cache sets `_sha1_mangle_key` as the
 *           region's key mangler, with no prefix (`[cache] config_prefix` only names configuration
 *           keys). The instance's list is under sha1(instance_uuid).
 *   value = dogpile's BytesBackend serialization: `<metadata JSON>|<pickle.dumps(payload)>`, the
 *           metadata `{"ct": <creation time, float epoch seconds>, "v": 2}` (json.dumps, ASCII), the
 *           payload the str consoleauth stored: its token dict as JSON (jsonutils.dumps), or the
 *           instance's JSON array of tokens.
 *   TTL   = none by default (dogpile's `redis_expiration_time` is 0): dogpile's reader treats a
 *           value as gone once now - ct > the region's expiration_time, which consoleauth set to
 *           `[consoleauth] token_ttl` (600 s) for both regions.
 *
 * The pickle is read by parsePickledString, which accepts one str and refuses every other pickle
 * without executing anything. Older dogpile.cache (< 1.1, e.g. 0.7.1 of Stein's upper-constraints)
 * pickled a `CachedValue` object instead: that needs GLOBAL/NEWOBJ and is refused as `not a token`.
 */

/** dogpile.cache's `value_version` in the metadata of the `metadata|pickle` serialization. */
const DOGPILE_VALUE_VERSION = 2;
/** `{"ct": 1796326014.9326782, "v": 2}` is 35 bytes; anything much longer is not dogpile's. */
const MAX_DOGPILE_METADATA_BYTES = 256;

/** What an oslo.cache entry holds, or why it is refused. */
export type OsloCacheValue =
  | {
      kind: 'authorization';
      /** The token, from the dict (checked against the key's hash). */
      token: string;
      authorization: Omit<LegacyAuthorization, 'expiresAt'>;
      /** dogpile's `ct`, epoch seconds. */
      createdAt: number;
    }
  | { kind: 'instance-list'; tokens: string[]; createdAt: number }
  /** A pickle that is not one str: another oslo.cache user's entry (or a forged one), never consoleauth's. */
  | { kind: 'not-a-token'; reason: string }
  | { kind: 'malformed'; field: string; reason: string };

/** The Redis key (without keyPrefix) oslo.cache uses for `value`: sha1 of its UTF-8 bytes, lowercase hex. */
export function osloCacheKey(value: string): string {
  return createHash('sha1').update(value, 'utf8').digest('hex');
}

/** Whether a key (without keyPrefix) can be an oslo.cache key: 40 lowercase hex digits. */
export function isOsloCacheKey(key: string): boolean {
  return /^[0-9a-f]{40}$/.test(key);
}

/**
 * Parses a raw value found under keyPrefix + `keyHash`. A token dict must carry the token whose
 * sha1 is `keyHash` (consoleauth always wrote it): the import gets the token from there.
 */
export function parseOsloCacheValue(raw: Buffer, keyHash: string): OsloCacheValue {
  if (raw.length > MAX_LEGACY_VALUE_BYTES) {
    return { kind: 'malformed', field: 'value', reason: 'larger than 64 KiB' };
  }
  const separator = raw.subarray(0, MAX_DOGPILE_METADATA_BYTES + 1).indexOf(0x7c); // '|'
  if (separator < 0) {
    return { kind: 'malformed', field: 'metadata', reason: "no dogpile metadata (JSON then '|')" };
  }
  let metadata: unknown;
  try {
    metadata = JSON.parse(STRICT_UTF8.decode(raw.subarray(0, separator)));
  } catch {
    return { kind: 'malformed', field: 'metadata', reason: 'not JSON' };
  }
  if (!isRecord(metadata) || typeof metadata.ct !== 'number' || !Number.isFinite(metadata.ct) || metadata.ct <= 0) {
    return { kind: 'malformed', field: 'metadata', reason: 'no creation time (ct)' };
  }
  if (metadata.v !== DOGPILE_VALUE_VERSION) {
    return { kind: 'malformed', field: 'metadata', reason: 'not dogpile value version 2' };
  }
  const createdAt = metadata.ct;

  const pickled = parsePickledString(raw.subarray(separator + 1), MAX_LEGACY_VALUE_BYTES);
  if (!pickled.ok) {
    return pickled.reason === 'pickle does not hold a single str' || pickled.reason === 'not a pickle of protocol 2 or later'
      ? { kind: 'not-a-token', reason: pickled.reason }
      : { kind: 'malformed', field: 'pickle', reason: pickled.reason };
  }
  let data: unknown;
  try {
    data = JSON.parse(pickled.value);
  } catch {
    return { kind: 'malformed', field: 'value', reason: 'not JSON' };
  }
  if (Array.isArray(data)) {
    const tokens = data.filter((token): token is string => typeof token === 'string' && isPlausibleToken(token));
    if (tokens.length !== data.length) {
      return { kind: 'malformed', field: 'value', reason: 'a list of something else than tokens' };
    }
    return { kind: 'instance-list', tokens, createdAt };
  }
  if (!isRecord(data)) {
    return { kind: 'malformed', field: 'value', reason: 'not a JSON object' };
  }
  const token = data.token;
  if (typeof token !== 'string' || !isPlausibleToken(token) || osloCacheKey(token) !== keyHash) {
    return { kind: 'malformed', field: 'token', reason: 'missing, or its sha1 is not the key' };
  }
  const parsed = parseNovaTokenDict(data, token);
  if (parsed.kind !== 'authorization') {
    return parsed.kind === 'malformed' ? parsed : { kind: 'malformed', field: 'value', reason: 'not a token' };
  }
  return { kind: 'authorization', token, authorization: parsed.authorization, createdAt };
}

/**
 * dogpile's serialization of a str payload: `json.dumps({"ct": createdAt, "v": 2})`, `|`, then
 * `pickle.dumps(payload)` (protocol 4). What `region.set(key, payload)` writes.
 */
export function osloCacheValue(payload: string, createdAt: number): Buffer {
  const metadata = `{"ct": ${pythonFloat(createdAt)}, "v": ${DOGPILE_VALUE_VERSION}}`;
  return Buffer.concat([Buffer.from(`${metadata}|`, 'ascii'), pickleString(payload)]);
}

/** consoleauth's token dict as `jsonutils.dumps` wrote it (Python's separators and ASCII escapes). */
export function novaTokenJsonForPython(token: string, authorization: LegacyWrite, nowMs: number): string {
  return pythonJsonObject([
    ['token', token],
    ['instance_uuid', authorization.instanceUuid],
    ['console_type', authorization.consoleType],
    ['host', authorization.host],
    ['port', authorization.port],
    ['internal_access_path', authorization.internalAccessPath],
    ['access_url', authorization.accessUrl],
    ['last_activity_at', { float: nowMs / 1000 }],
  ]);
}

/** An instance's token list as `jsonutils.dumps(tokens)` wrote it. */
export function novaTokenListForPython(tokens: string[]): string {
  return `[${tokens.map(pythonJsonString).join(', ')}]`;
}

type PythonJsonValue = string | number | null | { float: number };

function pythonJsonObject(entries: [string, PythonJsonValue][]): string {
  const members = entries.map(([key, value]) => {
    let text: string;
    if (value === null) {
      text = 'null';
    } else if (typeof value === 'string') {
      text = pythonJsonString(value);
    } else if (typeof value === 'number') {
      text = String(value);
    } else {
      text = pythonFloat(value.float);
    }
    return `${pythonJsonString(key)}: ${text}`;
  });
  return `{${members.join(', ')}}`;
}

/** json.dumps of a str (ensure_ascii): everything outside space..~ as \uXXXX (lowercase hex). */
function pythonJsonString(value: string): string {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Python's repr of a float for epoch timestamps: the shortest round-trip digits, `.0` when whole. */
function pythonFloat(value: number): string {
  return Number.isInteger(value) ? `${value}.0` : String(value);
}
