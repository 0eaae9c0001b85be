import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { Document, isMap, isNode, isScalar, LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import { isHostname } from '@keyhole/core';
import { parsePortRanges } from './port-ranges';
import { Cidr, ConnectorVia, DirectVia, Route, RouteMatch, Routes, RouteVia, SshNodeSpec, SshVia } from './routes';
import type { SshNodePool } from './ssh-nodes';
import { SshPrivateKey } from './ssh-private-key';
import { UpstreamError } from './upstream.errors';

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
 *     - name: tenant-7
 *       match: { cidr: 169.254.20.0/24, ports: "5900-5999" }
 *       via:
 *         ssh:
 *           host: 169.254.30.2                        # the proxy node: IP address or host name
 *           port: 22                                  # default 22
 *           user: keyhole
 *           key: env:KEYHOLE_SSH_KEY_TENANT7          # or file:/etc/keyhole/tenant7.key
 *           passphrase: env:KEYHOLE_SSH_PASSPHRASE    # optional, env: or file: too
 *           hostKey: "SHA256:..."                     # as `ssh-keygen -lf` prints it
 *           mode: forward                             # or nc (runs `nc HOST PORT` on the node)
 *           through: other-route                      # optional: an ssh route whose node reaches this one
 *
 * `match` has exactly one of `cidr` (IPv4 or IPv6 network, or one address) and `host`; `ports` is a
 * port, or ports and ranges separated by commas (a YAML list of them works too). First match wins;
 * a destination that matches no route is refused. `via: direct` is a TCP connect from the proxy's
 * own network namespace; `via: ssh` goes through an SSH proxy node (ssh-nodes.ts), whose key is read
 * when the file is loaded and kept in memory only; `via: { connector: /run/keyhole/mgmt.sock }` asks the
 * connector listening on that UNIX socket (libs/connector) to dial. Unknown fields are errors, not
 * ignored: a misspelt `ports` must not silently allow every port.
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

/** A missing field says `required`, not zod's "expected string, received undefined". */
const requiredMessage = (issue: z.core.$ZodRawIssue): string | undefined =>
  issue.code === 'invalid_type' && issue.input === undefined ? 'required' : undefined;

/** Where a secret comes from: `env:NAME` or `file:/absolute/path`; read after validation, never printed. */
const secretSourceSchema = z
  .string()
  .regex(/^(env:[A-Za-z_][A-Za-z0-9_]*|file:\/\S+)$/, 'must be env:VARIABLE or file:/absolute/path')
  .transform((text) => ({ kind: text.startsWith('env:') ? ('env' as const) : ('file' as const), name: text.slice(text.indexOf(':') + 1) }));
type SecretSource = z.output<typeof secretSourceSchema>;

const sshSchema = z.strictObject({
  host: z.string().refine((text) => isIP(text) !== 0 || isHostname(text), 'must be an IP address or a host name'),
  port: z.int().min(1).max(65535).default(22),
  user: z.string().regex(/^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/, 'must be a user name'),
  key: secretSourceSchema,
  passphrase: secretSourceSchema.optional(),
  hostKey: z
    .string()
    .regex(/^SHA256:[A-Za-z0-9+/]{43}$/, 'must be a SHA256 host key fingerprint, as `ssh-keygen -lf` prints it (SHA256:...)'),
  mode: z.enum(['forward', 'nc']).default('forward'),
  through: z.string().regex(ROUTE_NAME, 'must be the name of another ssh route').optional(),
});

/** An ssh via as the schema reads it: the key is still only where to find it. */
type ParsedSshVia = { kind: 'ssh'; ssh: z.output<typeof sshSchema> };

const viaSchema = z.unknown().transform((value, context): DirectVia | ConnectorVia | ParsedSshVia => {
  if (value === 'direct') {
    return { kind: 'direct' };
  }
  if (isRecord(value) && Object.keys(value).length === 1 && 'ssh' in value) {
    const parsed = sshSchema.safeParse(value.ssh, { error: requiredMessage });
    if (parsed.success) {
      return { kind: 'ssh', ssh: parsed.data };
    }
    for (const issue of parsed.error.issues) {
      context.addIssue({ ...issue, path: ['ssh', ...issue.path] });
    }
    return z.NEVER;
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
  context.addIssue({
    code: 'custom',
    message: value === undefined ? 'required' : 'must be direct, { ssh: {...} } or { connector: /path/of/its.sock }',
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
    routes.forEach((route, index) => {
      if (route.via.kind === 'ssh' && route.via.ssh.through !== undefined) {
        const problem = throughProblem(routes, route.name);
        if (problem !== undefined) {
          context.addIssue({ code: 'custom', message: problem, path: [index, 'via', 'ssh', 'through'] });
        }
      }
    });
  }),
});

/** Why a route's chain of `through`s is refused: a name that is no ssh route, or a cycle. */
function throughProblem(
  routes: readonly { name: string; via: DirectVia | ConnectorVia | ParsedSshVia }[],
  start: string,
): string | undefined {
  const visited = [start];
  let current = start;
  for (;;) {
    const via = routes.find((route) => route.name === current)?.via;
    const next = via?.kind === 'ssh' ? via.ssh.through : undefined;
    if (next === undefined) {
      return undefined;
    }
    const target = routes.find((route) => route.name === next);
    if (target === undefined) {
      return `"${next}" is not the name of a route`;
    }
    if (target.via.kind !== 'ssh') {
      return `"${next}" is not an ssh route`;
    }
    if (visited.includes(next)) {
      return `the chain ${[...visited, next].join(' -> ')} is a cycle`;
    }
    visited.push(next);
    current = next;
  }
}

/** Where secrets come from, and what dials ssh routes. */
export interface RoutesFileOptions {
  /** Variables `env:NAME` reads (default: this process's environment). */
  env?: NodeJS.ProcessEnv;
  /**
   * The process's SSH proxy node connections, which ssh routes dial through; their keys are read
   * only when this is given. Without one (the token API, a check), ssh routes are validated but
   * hold no key and do not dial.
   */
  sshNodes?: SshNodePool;
}

/**
 * Parses a routes file's text. Throws a RoutesFileError naming, for every problem, the line and
 * the field (`routes.yaml:7: routes[1].match.ports: "5900-" is not a port range`). The keys of ssh
 * routes are read now (a missing variable or file is a problem naming it, never its content).
 */
export function parseRoutesFile(text: string, file: string, options: RoutesFileOptions = {}): Routes {
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (document.errors.length > 0) {
    throw new RoutesFileError(
      file,
      document.errors.map((error) => `${file}:${lineCounter.linePos(error.pos[0]).line}: ${error.message}`),
    );
  }
  const parsed = routesFileSchema.safeParse(document.toJS(), { error: requiredMessage });
  if (!parsed.success) {
    throw new RoutesFileError(
      file,
      parsed.error.issues.flatMap((issue) => describeIssue(issue, document, lineCounter, file)),
    );
  }
  const problems: string[] = [];
  const sshRoutes = parsed.data.routes.flatMap((route, index): { name: string; node: SshNodeSpec; mode: SshVia['mode'] }[] => {
    if (route.via.kind !== 'ssh') {
      return [];
    }
    const { ssh } = route.via;
    const { host, port, user, hostKey, through, mode } = ssh;
    if (options.sshNodes === undefined) {
      return [{ name: route.name, node: { host, port, user, key: undefined, hostKey, through }, mode }];
    }
    const secret = (field: 'key' | 'passphrase', source: SecretSource): Buffer | undefined => {
      const read = readSecret(source, options.env ?? process.env);
      if ('error' in read) {
        problems.push(
          `${file}:${lineOf(document, lineCounter, ['routes', index, 'via', 'ssh', field])}: routes[${index}].via.ssh.${field}: ${read.error}`,
        );
        return undefined;
      }
      return read.value;
    };
    const keyBytes = secret('key', ssh.key);
    const passphrase = ssh.passphrase === undefined ? undefined : secret('passphrase', ssh.passphrase);
    if (keyBytes === undefined || (ssh.passphrase !== undefined && passphrase === undefined)) {
      return [];
    }
    const key = SshPrivateKey.parse(keyBytes, passphrase);
    if ('error' in key) {
      const where = ssh.key.kind === 'env' ? `environment variable ${ssh.key.name}` : `file ${ssh.key.name}`;
      problems.push(
        `${file}:${lineOf(document, lineCounter, ['routes', index, 'via', 'ssh', 'key'])}: routes[${index}].via.ssh.key: ${where} ${key.error}`,
      );
      return [];
    }
    return [{ name: route.name, node: { host, port, user, key, hostKey, through }, mode }];
  });
  if (problems.length > 0) {
    throw new RoutesFileError(file, problems);
  }
  const dialers = options.sshNodes?.bind(
    sshRoutes.flatMap((route) => (route.node.key === undefined ? [] : [{ ...route, node: { ...route.node, key: route.node.key } }])),
  );
  return new Routes(
    parsed.data.routes.map((route, index): Route => {
      const line = lineOf(document, lineCounter, ['routes', index]);
      if (route.via.kind !== 'ssh') {
        return { ...route, via: route.via, line };
      }
      const ssh = sshRoutes.find((candidate) => candidate.name === route.name)!;
      const via: RouteVia = { kind: 'ssh', node: ssh.node, mode: ssh.mode, dial: dialers?.get(route.name) ?? notDialling };
      return { ...route, via, line };
    }),
  );
}

/** The dialer of an ssh route read without node connections (a check, the token API). */
const notDialling = (): Promise<never> =>
  Promise.reject(new UpstreamError('ssh node unreachable', 'this process does not connect to ssh proxy nodes'));

/** A secret's bytes, or what is wrong: names the variable or file, never its content. */
function readSecret(source: SecretSource, env: NodeJS.ProcessEnv): { value: Buffer } | { error: string } {
  if (source.kind === 'env') {
    const value = env[source.name];
    return value === undefined || value === ''
      ? { error: `environment variable ${source.name} is not set` }
      : { value: Buffer.from(value) };
  }
  try {
    return { value: readFileSync(source.name) };
  } catch (error) {
    return { error: `file ${source.name} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})` };
  }
}

/** Reads and parses a routes file; throws a RoutesFileError when it cannot be read or used. */
export async function loadRoutesFile(file: string, options: RoutesFileOptions = {}): Promise<Routes> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new RoutesFileError(file, [`${file}: cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`]);
  }
  return parseRoutesFile(text, file, options);
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
