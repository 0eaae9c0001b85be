import { isIP } from 'node:net';

/**
 * The key a client address is counted under by the failure limiter: an IPv4 address as it is (an
 * IPv4-mapped IPv6 address as its IPv4 address), an IPv6 address by its /64 (one host usually
 * holds a whole /64, so counting single IPv6 addresses would limit nothing), `unknown` when the
 * address is not known (every such client shares one count).
 */
export function clientAddressKey(address: string | null | undefined): string {
  if (!address) {
    return 'unknown';
  }
  const unzoned = address.split('%')[0];
  const mapped = /^::ffff:([0-9.]+)$/i.exec(unzoned);
  if (mapped !== null && isIP(mapped[1]) === 4) {
    return mapped[1];
  }
  const version = isIP(unzoned);
  if (version === 4) {
    return unzoned;
  }
  if (version !== 6) {
    return 'unknown';
  }
  return `${ipv6Groups(unzoned).slice(0, 4).join(':')}::/64`;
}

/** The eight 16-bit groups of a valid IPv6 address, in lowercase hex without leading zeros. */
function ipv6Groups(address: string): string[] {
  const groupsOf = (part: string | undefined): string[] => {
    if (!part) {
      return [];
    }
    // A trailing dotted IPv4 part is two groups; only the first four groups matter here anyway.
    return part.split(':').flatMap((group) => (group.includes('.') ? ['0', '0'] : [group]));
  };
  const [head, tail] = address.split('::');
  const headGroups = groupsOf(head);
  const tailGroups = groupsOf(tail);
  const missing = 8 - headGroups.length - tailGroups.length;
  return [...headGroups, ...Array<string>(missing).fill('0'), ...tailGroups].map((group) => parseInt(group, 16).toString(16));
}
