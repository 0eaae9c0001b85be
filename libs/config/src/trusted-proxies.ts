import { BlockList, isIP } from 'node:net';

/** One address range: an address and its prefix length (32 or 128 for a single address). */
export interface AddressRange {
  address: string;
  prefix: number;
  family: 'ipv4' | 'ipv6';
}

/**
 * Parses `10.0.0.0/8`, `2001:db8::/32` or a single address (`192.0.2.7`, `::1`). Null when it is
 * none of these (a host name, a prefix out of range, anything else).
 */
export function parseAddressRange(text: string): AddressRange | null {
  const [address, prefixText, ...rest] = text.trim().split('/');
  const version = isIP(address);
  if (rest.length > 0 || version === 0) {
    return null;
  }
  const longest = version === 4 ? 32 : 128;
  if (prefixText !== undefined && !/^[0-9]{1,3}$/.test(prefixText)) {
    return null;
  }
  const prefix = prefixText === undefined ? longest : Number(prefixText);
  return prefix > longest ? null : { address, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

/** What the forwarding headers of a request say, once only trusted proxies are believed. */
export interface ForwardedRequest {
  /** The client: the right-most untrusted hop (the peer itself without a trusted proxy); null when that hop is not an address. */
  clientAddress: string | null;
  /** `http` or `https` from X-Forwarded-Proto, set by the trusted proxy that faced the client; null when not believed. */
  protocol: 'http' | 'https' | null;
}

/**
 * The front proxies (load balancers, ingress controllers) whose `X-Forwarded-For` and
 * `X-Forwarded-Proto` are believed (KEYHOLE_TRUSTED_PROXIES). From any other peer both headers
 * are ignored: a client could write anything in them. The same walk as proxy-addr (Express,
 * Fastify): from the peer leftwards through X-Forwarded-For, past every trusted address; the first
 * untrusted one is the client.
 */
export class TrustedProxies {
  private readonly ranges = new BlockList();
  readonly isEmpty: boolean;

  /** `ranges`: CIDRs or addresses, already validated by the configuration (an invalid one throws). */
  constructor(ranges: readonly string[]) {
    for (const text of ranges) {
      const range = parseAddressRange(text);
      if (range === null) {
        throw new Error(`not an address or CIDR: ${text}`);
      }
      this.ranges.addSubnet(range.address, range.prefix, range.family);
    }
    this.isEmpty = ranges.length === 0;
  }

  /** Whether a peer is a trusted proxy. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) counts as its IPv4 address. */
  trusts(address: string | undefined): boolean {
    if (this.isEmpty || address === undefined) {
      return false;
    }
    const plain = unmapIpv4(address);
    const version = isIP(plain);
    return version !== 0 && this.ranges.check(plain, version === 4 ? 'ipv4' : 'ipv6');
  }

  /**
   * The client and scheme of a request from `peer` with these header values (comma lists, as
   * each proxy appends its hop). A proxy that faced the client is assumed to have appended one
   * X-Forwarded-Proto value (or set the only one): of n trusted hops, the n-th value from the right.
   */
  resolve(peer: string | undefined, forwardedFor: string | undefined, forwardedProto: string | undefined): ForwardedRequest {
    if (!this.trusts(peer)) {
      return { clientAddress: peer ?? null, protocol: null };
    }
    const hops = splitList(forwardedFor);
    let clientAddress: string | null = peer ?? null;
    let trustedHops = 1;
    for (let index = hops.length - 1; index >= 0; index -= 1) {
      const hop = hops[index];
      if (isIP(unmapIpv4(hop)) === 0) {
        // Not an address (a port, garbage): the chain is broken here, and no client is known.
        clientAddress = null;
        break;
      }
      clientAddress = hop;
      if (!this.trusts(hop)) {
        break;
      }
      trustedHops += 1;
    }
    const protocols = splitList(forwardedProto);
    const offered = protocols.length === 0 ? undefined : protocols[Math.max(0, protocols.length - trustedHops)].toLowerCase();
    return { clientAddress, protocol: offered === 'http' || offered === 'https' ? offered : null };
  }
}

function splitList(value: string | undefined): string[] {
  return (value ?? '')
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item !== '');
}

function unmapIpv4(address: string): string {
  const mapped = /^::ffff:([0-9.]+)$/i.exec(address);
  return mapped !== null && isIP(mapped[1]) === 4 ? mapped[1] : address;
}
