import { encodeHeader, MAX_HEADER_BYTES, parseDestination, parseHeader } from './connector-protocol';

const header = (destination: string, version = 1) =>
  Buffer.concat([Buffer.from('KHC'), Buffer.from([version, destination.length]), Buffer.from(destination, 'latin1')]);

describe('connector protocol', () => {
  it('encodes host names, IPv4 and IPv6 (in brackets) and parses them back', () => {
    for (const [host, text] of [
      ['console.example.net', 'console.example.net:5900'],
      ['169.254.40.5', '169.254.40.5:5900'],
      ['fd00::1', '[fd00::1]:5900'],
    ]) {
      const encoded = encodeHeader({ host, port: 5900 });
      expect(encoded.subarray(5).toString('latin1')).toBe(text);
      expect(parseHeader(encoded)).toEqual({ done: true, destination: { host, port: 5900 }, rest: Buffer.alloc(0) });
    }
  });

  it('keeps what follows the header, and waits for a header that is not complete yet', () => {
    const whole = Buffer.concat([header('127.0.0.1:5900'), Buffer.from('RFB')]);
    expect(parseHeader(whole)).toMatchObject({ done: true, rest: Buffer.from('RFB') });
    for (let length = 0; length < whole.length - 3; length++) {
      expect(parseHeader(whole.subarray(0, length))).toEqual({ done: false });
    }
  });

  it('refuses at once what cannot be a header: wrong magic from the first byte, another version, an empty destination', () => {
    expect(parseHeader(Buffer.from('G'))).toEqual({ done: true, refusal: { status: 'malformed', reason: 'bad magic' } });
    expect(parseHeader(Buffer.from('KHX'))).toEqual({ done: true, refusal: { status: 'malformed', reason: 'bad magic' } });
    expect(parseHeader(Buffer.from([0x4b, 0x48, 0x43, 2]))).toEqual({
      done: true,
      refusal: { status: 'unsupportedVersion', reason: 'version 2' },
    });
    expect(parseHeader(header(''))).toEqual({ done: true, refusal: { status: 'malformed', reason: 'empty destination' } });
  });

  it.each([
    'localhost',
    'localhost:',
    ':5900',
    'host:0',
    'host:65536',
    'host:05900',
    'host:59a0',
    'fd00::1:5900',
    '[169.254.1.1]:5900',
    '[fd00::1:5900',
    'bad_host:5900',
    'a b:5900',
    'host:5900\n',
    `${'a'.repeat(250)}.b:1`,
  ])('refuses the destination %j as malformed', (destination) => {
    expect(parseDestination(destination)).toBeUndefined();
    expect(parseHeader(header(destination))).toEqual({ done: true, refusal: { status: 'malformed', reason: 'bad destination' } });
  });

  it('refuses non-ASCII bytes in the destination, and cannot encode what it would refuse', () => {
    expect(parseHeader(header('h\u00e9st:5900'))).toEqual({ done: true, refusal: { status: 'malformed', reason: 'bad destination' } });
    expect(() => encodeHeader({ host: 'a b', port: 1 })).toThrow(RangeError);
    expect(() => encodeHeader({ host: 'host', port: 70000 })).toThrow(RangeError);
  });

  it('is at most 260 bytes', () => {
    expect(MAX_HEADER_BYTES).toBe(260);
    const longest = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(57)}:65535`;
    expect(longest.length).toBe(255);
    expect(encodeHeader(parseDestination(longest)!).length).toBe(260);
  });
});
