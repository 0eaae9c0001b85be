import { parseAddressRange, TrustedProxies } from './trusted-proxies';

describe('parseAddressRange', () => {
  it('reads IPv4 and IPv6 CIDRs and single addresses', () => {
    expect(parseAddressRange('10.0.0.0/8')).toEqual({ address: '10.0.0.0', prefix: 8, family: 'ipv4' });
    expect(parseAddressRange(' 192.0.2.7 ')).toEqual({ address: '192.0.2.7', prefix: 32, family: 'ipv4' });
    expect(parseAddressRange('2001:db8::/32')).toEqual({ address: '2001:db8::', prefix: 32, family: 'ipv6' });
    expect(parseAddressRange('::1')).toEqual({ address: '::1', prefix: 128, family: 'ipv6' });
  });

  it.each(['', 'proxy.example.com', '10.0.0.0/33', '::/129', '10.0.0.0/', '10.0.0.0/8/8', '10.0.0.0/-1', '10.0.0.0/1e1', '10.0.0/8'])(
    'refuses %p',
    (text) => {
      expect(parseAddressRange(text)).toBeNull();
    },
  );
});

describe('TrustedProxies', () => {
  const ingress = new TrustedProxies(['10.0.0.0/8', '2001:db8::/32']);

  it('ignores both headers from a peer it does not trust', () => {
    expect(ingress.resolve('198.51.100.7', '203.0.113.9', 'https')).toEqual({ clientAddress: '198.51.100.7', protocol: null });
    expect(new TrustedProxies([]).resolve('10.0.0.1', '203.0.113.9', 'https')).toEqual({ clientAddress: '10.0.0.1', protocol: null });
    expect(ingress.resolve(undefined, '203.0.113.9', 'https')).toEqual({ clientAddress: null, protocol: null });
  });

  it('believes a trusted peer: the client is the right-most untrusted hop, not a forged left-most one', () => {
    // The client forged "1.2.3.4"; the ingress appended the address it saw.
    expect(ingress.resolve('10.0.0.5', '1.2.3.4, 203.0.113.9', 'https')).toEqual({ clientAddress: '203.0.113.9', protocol: 'https' });
    // Two trusted hops (an outer balancer, then the ingress): still the first untrusted one.
    expect(ingress.resolve('10.0.0.5', '1.2.3.4, 203.0.113.9, 10.1.2.3', 'http')).toEqual({
      clientAddress: '203.0.113.9',
      protocol: 'http',
    });
    // Every hop trusted: the left-most.
    expect(ingress.resolve('10.0.0.5', '10.9.9.9, 10.1.2.3', undefined)).toEqual({ clientAddress: '10.9.9.9', protocol: null });
    // No X-Forwarded-For: the peer.
    expect(ingress.resolve('10.0.0.5', undefined, 'https')).toEqual({ clientAddress: '10.0.0.5', protocol: 'https' });
  });

  it('takes the scheme the trusted proxy that faced the client set, not one the client wrote', () => {
    // One trusted hop appended its value at the right; the client wrote "http" before it.
    expect(ingress.resolve('10.0.0.5', '203.0.113.9', 'http, https').protocol).toBe('https');
    // Two trusted hops, each appending: the outer one's value, second from the right.
    expect(ingress.resolve('10.0.0.5', '203.0.113.9, 10.1.2.3', 'ftp, https, http').protocol).toBe('https');
    // A proxy that replaces the header leaves one value.
    expect(ingress.resolve('10.0.0.5', '203.0.113.9, 10.1.2.3', 'HTTPS').protocol).toBe('https');
    expect(ingress.resolve('10.0.0.5', '203.0.113.9', 'gopher').protocol).toBeNull();
  });

  it('handles IPv6 and IPv4-mapped peers, and a hop that is not an address', () => {
    expect(ingress.resolve('::ffff:10.0.0.5', '203.0.113.9', undefined).clientAddress).toBe('203.0.113.9');
    expect(ingress.resolve('2001:db8::7', '2001:db8:1::9, 2a00::1', undefined).clientAddress).toBe('2a00::1');
    expect(ingress.resolve('10.0.0.5', '203.0.113.9, not-an-address', undefined).clientAddress).toBeNull();
    expect(ingress.trusts('::ffff:10.0.0.5')).toBe(true);
    expect(ingress.trusts('11.0.0.1')).toBe(false);
    expect(ingress.trusts('garbage')).toBe(false);
  });

  it('refuses a range that is not an address or CIDR', () => {
    expect(() => new TrustedProxies(['proxy.example.com'])).toThrow('not an address or CIDR');
  });
});
