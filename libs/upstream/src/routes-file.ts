import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { Document, isMap, isNode, isScalar, LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import { isHostname } from '@keyhole/core';
import { parsePortRanges } from './port-ranges';
import { Cidr, Route, RouteMatch, Routes, RouteVia } from './routes';

/*
 * The routes file (KEYHOLE_ROUTES_FILE), YAML:
 *
 *   routes:
 *     - name: rack1                                   # lowercase letters, digits, inner dashes
 *       match: { cidr: 169.254.10.0/24, ports: "5900-5999,10000-20000" }
 *       via: direct
 *     - name: console-host
 *       match: { host: console.example.net }          # a host name, exact; ports omitted = all
 *       via: direct
 *
 * `match` has exactly one of `cidr` (IPv4 or IPv6 network, or one address) and `host`; `ports` is a
 * port, or ports and ranges separated by commas (a YAML list of them works too). First match wins;
 * a destination that matches no route is refused. `via: direct` is a TCP connect from the proxy's
 * own network namespace; `via: { connector: /run/keyhole/mgmt.sock }` asks the connector listening
 * on that UNIX socket (libs/connector) to dial; the design's `ssh` kind is refused until it exists.
 * Unknown fields are errors, not ignored: a misspelt `ports` must not silently allow every port.
 */

/** A routes file that cannot be used; `problems` are lines `FILE:LINE: FIELD: what is wrong`. */
export class RoutesFileError extends Error {
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`Invalid routes file ${file}:\n${problems.map((problem) => `  ${problem}`).join('\n')}`);
    this.name = 'RoutesFileError';
  }
}

const ROUTE_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

const cidrSchema = z.string().transform((text, context): Cidr => {
  const [address, prefixText, ...rest] = text.split('/');
  const family = isIP(address);
  const maxPrefix = family === 4 ? 32 : 128;
  const prefix = prefixText === undefined ? maxPrefix : /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : Number.NaN;
  if (family === 0 || rest.length > 0 || !(prefix >= 0 && prefix <= maxPrefix)) {
    context.addIssue({ code: 'custom', message: `"${text}" is not an IPv4 or IPv6 CIDR (such as 169.254.10.0/24 or fd00::/64)` });
    return z.NEVER;
  }
  return { family: family === 4 ? 'ipv4' : 'ipv6', address, prefix };
});

const hostSchema = z.string().transform((text, context) => {
  if (isIP(text) !== 0) {
    context.addIssue({ code: 'custom', message: `"${text}" is an IP address: match it with cidr` });
    return z.NEVER;
  }
  if (!isHostname(text)) {
    context.addIssue({ code: 'custom', message: `"${text}" is not a host name` });
    return z.NEVER;
  }
  return text.toLowerCase();
});

const portsSchema = z.union([z.string(), z.int(), z.array(z.union([z.string(), z.int()])).min(1)]).transform((value, context) => {
  const text = Array.isArray(value) ? value.join(',') : String(value);
  const parsed = parsePortRanges(text);
  if ('error' in parsed) {
    context.addIssue({ code: 'custom', message: parsed.error });
    return z.NEVER;
  }
  return parsed.ranges;
});

const matchSchema = z
  .strictObject({ cidr: cidrSchema.optional(), host: hostSchema.optional(), ports: portsSchema.optional() })
  .transform((match, context): RouteMatch => {
    if (match.cidr !== undefined && match.host === undefined) {
      return { kind: 'cidr', cidr: match.cidr, ports: match.ports };
    }
    if (match.host !== undefined && match.cidr === undefined) {
      return { kind: 'host', host: match.host, ports: match.ports };
    }
    context.addIssue({ code: 'custom', message: 'needs exactly one of cidr and host' });
    return z.NEVER;
  });

const LATER_KINDS = new Set(['ssh']);

const viaSchema = z.unknown().transform((value, context): RouteVia => {
  if (value === 'direct') {
    return { kind: 'direct' };
  }
  if (isRecord(value) && Object.keys(value).length === 1 && 'connector' in value) {
    // An absolute path: a relative one would depend on the directory the proxy was started in.
    const socket = value.connector;
    if (typeof socket === 'string' && socket.startsWith('/') && socket.length <= 107 && !socket.includes('\0')) {
      return { kind: 'connector', socket };
    }
    context.addIssue({ code: 'custom', message: 'connector: must be the absolute path of a UNIX socket (at most 107 bytes)' });
    return z.NEVER;
  }
  const kind = typeof value === 'string' ? value : isRecord(value) && Object.keys(value).length === 1 ? Object.keys(value)[0] : undefined;
  context.addIssue({
    code: 'custom',
    message:
      value === undefined
        ? 'required'
        : kind !== undefined && LATER_KINDS.has(kind)
          ? `${kind} routes are not supported by this version of keyhole: only direct is (ssh and connector come later)`
          : 'must be direct',
  });
  return z.NEVER;
});

const routeSchema = z.strictObject({
  name: z.string().regex(ROUTE_NAME, 'lowercase letters, digits and inner dashes, at most 63'),
  match: matchSchema,
  via: viaSchema,
});

const routesFileSchema = z.strictObject({
  routes: z.array(routeSchema).superRefine((routes, context) => {
    const seen = new Set<string>();
    routes.forEach((route, index) => {
      if (seen.has(route.name)) {
        context.addIssue({ code: 'custom', message: `"${route.name}" is the name of an earlier route`, path: [index, 'name'] });
      }
      seen.add(route.name);
    });
  }),
});

/**
 * Parses a routes file's text. Throws a RoutesFileError naming, for every problem, the line and
 * the field (`routes.yaml:7: routes[1].match.ports: "5900-" is not a port range`).
 */
export function parseRoutesFile(text: string, file: string): Routes {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (document.errors.length > 0) {
    throw new RoutesFileError(
      file,
      document.errors.map((error) => `${file}:${lineCounter.linePos(error.pos[0]).line}: ${error.message}`),
    );
  }
  const parsed = routesFileSchema.safeParse(document.toJS(), {
    error: (issue) => (issue.code === 'invalid_type' && issue.input === undefined ? 'required' : undefined),
  });
  if (!parsed.success) {
    throw new RoutesFileError(
      file,
      parsed.error.issues.flatMap((issue) => describeIssue(issue, document, lineCounter, file)),
    );
  }
  return new Routes(
    parsed.data.routes.map((route, index): Route => ({ ...route, line: lineOf(document, lineCounter, ['routes', index]) })),
  );
}

/** Reads and parses a routes file; throws a RoutesFileError when it cannot be read or used. */
export async function loadRoutesFile(file: string): Promise<Routes> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new RoutesFileError(file, [`${file}: cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`]);
  }
  return parseRoutesFile(text, file);
}

function describeIssue(issue: z.core.$ZodIssue, document: Document, lineCounter: LineCounter, file: string): string[] {
  const path = issue.path.filter((key): key is string | number => typeof key !== 'symbol');
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map(
      (key) =>
        `${file}:${lineOfKey(document, lineCounter, path, key)}: ${formatPath([...path, key])}: unknown field` +
        (path.length === 0 ? ' (the file has one key, routes)' : ''),
    );
  }
  return [`${file}:${lineOf(document, lineCounter, path)}: ${formatPath(path)}: ${issue.message}`];
}

/** `routes[1].match.ports` */
function formatPath(path: (string | number)[]): string {
  return path.map((key, index) => (typeof key === 'number' ? `[${key}]` : index === 0 ? key : `.${key}`)).join('') || '(file)';
}

/** The line of the node at `path`, or of its nearest ancestor that exists (a missing field: its object). */
function lineOf(document: Document, lineCounter: LineCounter, path: (string | number)[]): number {
  for (let length = path.length; length >= 0; length--) {
    const node = length === 0 ? document.contents : document.getIn(path.slice(0, length), true);
    if (isNode(node) && node.range) {
      return lineCounter.linePos(node.range[0]).line;
    }
  }
  return 1;
}

/** The line of `key` in the mapping at `path` (an unknown field: point at the field itself). */
function lineOfKey(document: Document, lineCounter: LineCounter, path: (string | number)[], key: string): number {
  const map = path.length === 0 ? document.contents : document.getIn(path, true);
  if (isMap(map)) {
    const pair = map.items.find((item) => isScalar(item.key) && item.key.value === key);
    if (pair && isScalar(pair.key) && pair.key.range) {
      return lineCounter.linePos(pair.key.range[0]).line;
    }
  }
  return lineOf(document, lineCounter, path);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
