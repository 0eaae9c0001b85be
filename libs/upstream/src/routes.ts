import { BlockList, isIP } from 'node:net';
import { formatPortRanges, inPortRanges, PortRange } from './port-ranges';
import type { SshPrivateKey } from './ssh-private-key';
import type { Dialer } from './upstream-connector';

/** An IPv4 or IPv6 network: `address/prefix` (a bare address is the network of that one address). */
export interface Cidr {
  family: 'ipv4' | 'ipv6';
  address: string;
  prefix: number;
}

/** What a route matches: an IP network or one host name, and ports (undefined = every port). */
export type RouteMatch = { kind: 'cidr'; cidr: Cidr; ports?: PortRange[] } | { kind: 'host'; host: string; ports?: PortRange[] };

/** A TCP connect from the proxy's own network namespace. */
export interface DirectVia {
  kind: 'direct';
}

/** A proxy node reached over SSH: where it is, who logs in, and the pinned host key. */
export interface SshNodeSpec {
  host: string;
  port: number;
  user: string;
  /**
   * Read from the environment or a file when a proxy loads the routes file; memory only. Undefined
   * in processes that do not dial (the token API, `keyhole routes check`): they never hold the key.
   */
  key: SshPrivateKey | undefined;
  /** The node's host key, `SHA256:<base64>` as `ssh-keygen -lf` prints it. */
  hostKey: string;
  /** The (ssh) route whose node this node is reached through, if any. */
  through?: string;
}

/**
 * Through an SSH proxy node: one SSH connection per node, shared by every session, one channel
 * each: `direct-tcpip` (`forward`) or `nc HOST PORT` run on the node (`nc`, where TCP forwarding is off).
 */
export interface SshVia {
  kind: 'ssh';
  node: SshNodeSpec;
  mode: 'forward' | 'nc';
  /** Opens a console's stream through the node: bound to the process's node connections when loaded. */
  dial: Dialer;
}

/**
 * Through a connector (`keyhole connector serve`) in another network namespace, over its UNIX
 * socket: the proxy never has a TCP/IP route to these consoles, and the connector dials only what
 * its own routes allow.
 */
export interface ConnectorVia {
  kind: 'connector';
  /** Absolute path of the connector's UNIX socket. */
  socket: string;
}

/** How a route reaches its consoles: a discriminated union, one kind per way. */
export type RouteVia = DirectVia | SshVia | ConnectorVia;

/** One entry of a routes file. */
export interface Route {
  name: string;
  match: RouteMatch;
  via: RouteVia;
  /** Its line in the routes file (1-based), for messages. */
  line: number;
}

/** IPv6 addresses that carry an IPv4 address (`::ffff:a.b.c.d`): they are matched as that address. */
const IPV4_MAPPED = new BlockList();
IPV4_MAPPED.addSubnet('::ffff:0:0', 96, 'ipv6');

interface CompiledRoute {
  route: Route;
  /** For a cidr route: the network, and whether it is an IPv4 one. */
  network?: { list: BlockList; ipv4: boolean };
}

/**
 * A routes table: which route, if any, a destination (host, port) takes. First match wins.
 *
 * An IP address matches `cidr` routes of its family (an IPv4-mapped IPv6 address counts as IPv4).
 * A host name matches `host` routes only, exactly and case-insensitively, and never a `cidr`
 * route: deciding by what the name resolves to would need a DNS lookup here, and the name may
 * resolve to another address when the proxy dials it a moment later (DNS rebinding), so the check
 * would not hold for the connection it allowed. Naming hosts explicitly leaves nothing to resolve.
 */
export class Routes {
  private readonly compiled: CompiledRoute[];

  constructor(readonly list: readonly Route[]) {
    this.compiled = list.map((route) => {
      if (route.match.kind !== 'cidr') {
        return { route };
      }
      const { cidr } = route.match;
      const network = new BlockList();
      network.addSubnet(cidr.address, cidr.prefix, cidr.family);
      return { route, network: { list: network, ipv4: cidr.family === 'ipv4' } };
    });
  }

  get size(): number {
    return this.list.length;
  }

  /** The first route that `host:port` matches, or undefined: the destination is not routable. */
  match(host: string, port: number): Route | undefined {
    const family = isIP(host);
    if (family === 0) {
      const name = host.toLowerCase();
      return this.compiled.find(
        ({ route }) => route.match.kind === 'host' && route.match.host === name && portMatches(route.match.ports, port),
      )?.route;
    }
    const type = family === 4 ? 'ipv4' : 'ipv6';
    const ipv4 = family === 4 || IPV4_MAPPED.check(host, 'ipv6');
    return this.compiled.find(
      ({ route, network }) =>
        network !== undefined && network.ipv4 === ipv4 && portMatches(route.match.ports, port) && network.list.check(host, type),
    )?.route;
  }
}

/** Whether a destination may be dialled, and by which route (none when no routes file is configured). */
export type RouteDecision = { routable: true; route: Route | undefined } | { routable: false };

const EVERY_DESTINATION: RouteDecision = { routable: true, route: undefined };
const NOT_ROUTABLE: RouteDecision = { routable: false };

/**
 * The allow-list's answer for `host:port`: with a routes table, the route it takes or not
 * routable; without one (no routes file), routable by no route in particular (a direct connect).
 */
export function decideRoute(routes: Routes | undefined, host: string, port: number): RouteDecision {
  if (routes === undefined) {
    return EVERY_DESTINATION;
  }
  const route = routes.match(host, port);
  return route ? { routable: true, route } : NOT_ROUTABLE;
}

function portMatches(ports: PortRange[] | undefined, port: number): boolean {
  return ports === undefined || inPortRanges(ports, port);
}

/** A route as `keyhole routes check` prints it. */
export function describeRoute(route: Route): { name: string; match: string; ports: string; via: string } {
  const { match } = route;
  return {
    name: route.name,
    match: match.kind === 'cidr' ? `cidr ${match.cidr.address}/${match.cidr.prefix}` : `host ${match.host}`,
    ports: match.ports === undefined ? 'all' : formatPortRanges(match.ports),
    via: describeVia(route.via),
  };
}

function describeVia(via: RouteVia): string {
  switch (via.kind) {
    case 'direct':
      return 'direct';
    case 'ssh': {
      const { node } = via;
      return `ssh ${node.user}@${node.host}:${node.port} (${via.mode}${node.through === undefined ? '' : `, through ${node.through}`})`;
    }
    case 'connector':
      return `connector ${via.socket}`;
  }
}
