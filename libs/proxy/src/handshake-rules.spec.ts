import { checkOrigin, extractToken, hostWithoutPort, OriginCheck, offersBinarySubprotocol } from './handshake-rules';

/*
 * Nova's websocketproxy unit tests (nova/tests/unit/console/test_websocketproxy.py), translated:
 * same headers, same tokens, same verdicts. Nova's fixture allows the extra origins
 * allowed-origin-example-1.net and allowed-origin-example-2.net.
 */

const NOVA_ALLOWED_ORIGINS = ['allowed-origin-example-1.net', 'allowed-origin-example-2.net'];

/** Nova's usual request: a page loaded from https://example.net:6080 on that same host. */
function check(overrides: Partial<OriginCheck> = {}): OriginCheck {
  return {
    origin: 'https://example.net:6080',
    host: 'example.net:6080',
    forwardedProto: undefined,
    allowedOrigins: NOVA_ALLOWED_ORIGINS,
    accessUrlBase: 'https://example.net:6080',
    ...overrides,
  };
}

describe('extractToken', () => {
  it('takes the token from the query string', () => {
    expect(extractToken('/?token=123-456-789', undefined)).toBe('123-456-789');
    expect(extractToken('/websockify?token=123-456-789', 'token="other"')).toBe('123-456-789');
  });

  it('takes the last token when the query names several (as Nova)', () => {
    expect(extractToken('/?token=first&token=123-456-789', undefined)).toBe('123-456-789');
  });

  it('decodes a percent-encoded query token', () => {
    expect(extractToken('/?token=a%2Bb%3D', undefined)).toBe('a+b=');
  });

  it('takes the token from a quoted cookie (noVNC < 1.1)', () => {
    expect(extractToken('/', 'token="123-456-789"')).toBe('123-456-789');
  });

  it('takes the token from an unquoted cookie among others', () => {
    expect(extractToken('/websockify', 'lang=en; token=123-456-789; theme=dark')).toBe('123-456-789');
  });

  it('skips a malformed cookie part and still finds the token (Nova test_malformed_cookie)', () => {
    expect(extractToken('/', '?=!; token="123-456-789"')).toBe('123-456-789');
  });

  it('skips a cookie part without "=" and one that does not decode', () => {
    expect(extractToken('/', 'garbage; token="123-456-789"')).toBe('123-456-789');
    expect(extractToken('/', 'token=%E0%A4%A; other=1')).toBeUndefined();
  });

  it('prefers the query token over the cookie', () => {
    expect(extractToken('/?token=from-query', 'token="from-cookie"')).toBe('from-query');
  });

  it('falls back to the cookie when the query token is empty (Nova drops blank values)', () => {
    expect(extractToken('/?token=', 'token="123-456-789"')).toBe('123-456-789');
  });

  it('does not take a cookie whose name merely ends in "token"', () => {
    expect(extractToken('/', 'csrftoken=abc; xtoken=def')).toBeUndefined();
  });

  it('returns undefined when there is no token at all', () => {
    expect(extractToken('/', undefined)).toBeUndefined();
    expect(extractToken('/websockify?path=x', 'lang=en')).toBeUndefined();
    expect(extractToken('/?token=', undefined)).toBeUndefined();
    expect(extractToken('/', '')).toBeUndefined();
  });
});

describe('checkOrigin', () => {
  // Each case: its name, the verdict, and the requests (changes to Nova's usual one) that get it.
  it.each<[string, 'allowed' | 'refused', Partial<OriginCheck>[]]>([
    ['allows the request from the same host (Nova test_new_websocket_client)', 'allowed', [{}]],
    [
      'allows a request without an Origin header: not a browser (test_..._no_origin_header)',
      'allowed',
      [{ origin: undefined }, { origin: undefined, accessUrlBase: null, host: 'elsewhere.example' }],
    ],
    ['refuses a blank Origin header (test_..._blank_origin_header)', 'refused', [{ origin: '' }]],
    [
      'refuses an Origin that is not a URL, such as the "null" of a sandboxed page',
      'refused',
      [{ origin: 'null' }, { origin: 'example.net' }],
    ],
    [
      'ignores ports when comparing the origin host with the Host header',
      'allowed',
      [
        { origin: 'https://example.net', host: 'example.net:6080' },
        { origin: 'https://example.net:443', host: 'example.net' },
        { origin: 'https://example.net:1234', host: 'example.net:6080' },
      ],
    ],
    ['compares hosts without regard to case', 'allowed', [{ origin: 'https://EXAMPLE.net:6080', host: 'Example.NET:6080' }]],
    [
      'refuses an origin host that is neither the Host nor allowed (test_..._bad_origin_header)',
      'refused',
      [{ origin: 'https://bad-origin-example.net:6080' }],
    ],
    [
      'refuses a host that only contains or extends the expected one',
      'refused',
      [
        { origin: 'https://example.net.evil.example:6080' },
        { origin: 'https://evilexample.net:6080' },
        { origin: 'https://allowed-origin-example-2.net.evil.example' },
      ],
    ],
    [
      'allows an origin in the allowed list (test_..._allowed_origin_header)',
      'allowed',
      [{ origin: 'https://allowed-origin-example-2.net:6080' }],
    ],
    [
      'allows an IPv6 Host and Origin (test_new_websocket_client_ipv6_url)',
      'allowed',
      [{ origin: 'https://[2001:db8::1]:6080', host: '[2001:db8::1]:6080', accessUrlBase: 'https://[2001:db8::1]:6080' }],
    ],
    [
      'refuses an IPv6 origin that is another address',
      'refused',
      [{ origin: 'https://[2001:db8::2]:6080', host: '[2001:db8::1]:6080', accessUrlBase: 'https://[2001:db8::1]:6080' }],
    ],
    [
      'refuses an https page for an http access URL base (test_..._https_origin_proto_http)',
      'refused',
      [{ accessUrlBase: 'http://example.net:6080' }],
    ],
    [
      'refuses an https page for a ws access URL base (serial, test_..._https_origin_proto_ws)',
      'refused',
      [{ accessUrlBase: 'ws://example.net:6080' }],
    ],
    ['refuses an http page for an https access URL base', 'refused', [{ origin: 'http://example.net:6080' }]],
    [
      'counts ws as http and wss as https',
      'allowed',
      [{ origin: 'http://example.net:6080', accessUrlBase: 'ws://example.net:6080' }, { accessUrlBase: 'wss://example.net:6080' }],
    ],
    [
      'honours X-Forwarded-Proto https behind a TLS terminator (test_..._http_forwarded_proto_https)',
      'allowed',
      [{ origin: 'http://example.net:6080', forwardedProto: 'https', accessUrlBase: 'wss://example.net:6080' }],
    ],
    [
      'refuses X-Forwarded-Proto https for an http access URL base',
      'refused',
      [{ origin: 'http://example.net:6080', forwardedProto: 'https', accessUrlBase: 'http://example.net:6080' }],
    ],
    ['refuses an Origin when the token has no access URL base to check its scheme against', 'refused', [{ accessUrlBase: null }]],
    ['refuses an access URL base that is not a URL', 'refused', [{ accessUrlBase: 'not a url' }]],
  ])('%s', (_name, verdict, requests) => {
    for (const request of requests) {
      const result = checkOrigin(check(request));
      if (verdict === 'allowed') {
        expect({ request, result }).toEqual({ request, result: { allowed: true } });
      } else {
        expect({ request, result }).toMatchObject({ request, result: { allowed: false } });
      }
    }
  });
  it('gives a short reason with every refusal', () => {
    const verdict = checkOrigin(check({ origin: 'https://bad-origin-example.net' }));
    expect(verdict.allowed).toBe(false);
    if (!verdict.allowed) {
      expect(verdict.reason.length).toBeGreaterThan(0);
      expect(verdict.reason.length).toBeLessThan(123);
    }
  });

  it('never adds the request Host to the allowed list (Nova bug 2158919)', () => {
    const allowedOrigins = [...NOVA_ALLOWED_ORIGINS];
    // A first request whose Host and Origin are the attacker's: same host, so allowed.
    expect(checkOrigin(check({ origin: 'https://evil.com', host: 'evil.com', allowedOrigins }))).toEqual({ allowed: true });
    // The next request, for the real host, with the attacker's Origin: refused.
    expect(checkOrigin(check({ origin: 'https://evil.com', host: 'example.net:6080', allowedOrigins }))).toMatchObject({ allowed: false });
    expect(allowedOrigins).toEqual(NOVA_ALLOWED_ORIGINS);
  });

  it('works on a frozen allowed list (it only reads it)', () => {
    const allowedOrigins = Object.freeze([...NOVA_ALLOWED_ORIGINS]);
    expect(checkOrigin(check({ origin: 'https://example.net', allowedOrigins }))).toEqual({ allowed: true });
    expect(checkOrigin(check({ origin: 'https://allowed-origin-example-1.net', allowedOrigins }))).toEqual({ allowed: true });
  });
});

describe('hostWithoutPort', () => {
  it.each([
    ['example.net:6080', 'example.net'],
    ['example.net', 'example.net'],
    ['Example.NET:80', 'example.net'],
    ['[2001:db8::1]:6080', '2001:db8::1'],
    ['[2001:db8::1]', '2001:db8::1'],
    ['2001:db8::1', '2001:db8::1'],
    ['  example.net:6080 ', 'example.net'],
  ])('%s -> %s', (host, expected) => {
    expect(hostWithoutPort(host)).toBe(expected);
  });
});

describe('offersBinarySubprotocol (websockify: binary, or nothing)', () => {
  it('accepts a client that offers no subprotocol', () => {
    expect(offersBinarySubprotocol(undefined)).toBe(true);
  });

  it('accepts a client that offers binary, alone or among others, spaces or not', () => {
    expect(offersBinarySubprotocol('binary')).toBe(true);
    expect(offersBinarySubprotocol('base64, binary')).toBe(true);
    expect(offersBinarySubprotocol('binary,base64')).toBe(true);
  });

  it('refuses a client that offers only base64, or only other subprotocols', () => {
    expect(offersBinarySubprotocol('base64')).toBe(false);
    expect(offersBinarySubprotocol('chat, base64')).toBe(false);
    expect(offersBinarySubprotocol('Binary')).toBe(false);
  });
});
