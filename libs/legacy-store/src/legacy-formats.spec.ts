import { MAX_LEGACY_VALUE_BYTES, novaTokenValue, parseLegacyValue, websockifyTokenValue } from './legacy-formats';

const TOKEN = '0f4b1a52-9b7e-4c1e-8d6a-2f3e4d5c6b7a';
const INSTANCE = '11111111-1111-4111-8111-111111111111';

function nova(fields: Record<string, unknown>): Buffer {
  return Buffer.from(
    JSON.stringify({
      token: TOKEN,
      instance_uuid: INSTANCE,
      console_type: 'novnc',
      host: '192.0.2.10',
      port: 5900,
      internal_access_path: null,
      access_url: `http://proxy.example:6080/vnc_auto.html?path=%3Ftoken%3D${TOKEN}`,
      last_activity_at: 1700000000.123,
      ...fields,
    }),
  );
}

function parse(format: 'nova' | 'websockify', value: string | Buffer) {
  return parseLegacyValue(format, typeof value === 'string' ? Buffer.from(value) : value, TOKEN);
}

describe('Nova consoleauth values', () => {
  it('reads every field, the access URL without query and fragment', () => {
    expect(parse('nova', nova({}))).toEqual({
      kind: 'authorization',
      authorization: {
        instanceUuid: INSTANCE,
        consoleType: 'novnc',
        host: '192.0.2.10',
        port: 5900,
        internalAccessPath: null,
        accessUrlBase: 'http://proxy.example:6080/vnc_auto.html',
      },
    });
  });

  it('takes a numeric string port, IPv6 with or without brackets, no access URL, an uppercase UUID', () => {
    const parsed = parse(
      'nova',
      nova({ port: '5901', host: '[fd00::5]', access_url: null, instance_uuid: INSTANCE.toUpperCase(), internal_access_path: '/path?x=1' }),
    );
    expect(parsed).toMatchObject({
      kind: 'authorization',
      authorization: { port: 5901, host: 'fd00::5', accessUrlBase: null, instanceUuid: INSTANCE, internalAccessPath: '/path?x=1' },
    });
    expect(parse('nova', nova({ host: '::1' }))).toMatchObject({ authorization: { host: '::1' } });
    const { token: _token, ...withoutToken } = JSON.parse(nova({}).toString());
    expect(parse('nova', JSON.stringify(withoutToken)).kind).toBe('authorization');
  });

  it('recognises a per-instance list', () => {
    expect(parse('nova', JSON.stringify([TOKEN]))).toEqual({ kind: 'instance-list' });
  });

  it.each([
    ['not JSON', 'host: 1.2.3.4', 'value'],
    ['a JSON string', '"abc"', 'value'],
    ['another token in the value', nova({ token: 'other' }), 'token'],
    ['no instance', nova({ instance_uuid: null }), 'instance_uuid'],
    ['a bad instance', nova({ instance_uuid: 'abc' }), 'instance_uuid'],
    ['no console type', nova({ console_type: undefined }), 'console_type'],
    ['a huge console type', nova({ console_type: 'x'.repeat(256) }), 'console_type'],
    ['no host', nova({ host: undefined }), 'host'],
    ['a host with a space', nova({ host: 'a b' }), 'host'],
    ['a host that is a number', nova({ host: 5 }), 'host'],
    ['port 0', nova({ port: 0 }), 'port'],
    ['port 65536', nova({ port: 65536 }), 'port'],
    ['port "abc"', nova({ port: 'abc' }), 'port'],
    ['port 5900.5', nova({ port: 5900.5 }), 'port'],
    ['port "-1"', nova({ port: '-1' }), 'port'],
    ['an internal path with CRLF', nova({ internal_access_path: '/a\r\nHost: evil' }), 'internal_access_path'],
    ['an internal path that is a number', nova({ internal_access_path: 3 }), 'internal_access_path'],
    ['an access URL that is not one', nova({ access_url: 'not a url' }), 'access_url'],
    ['a javascript: access URL', nova({ access_url: 'javascript:alert(1)' }), 'access_url'],
  ])('refuses %s', (_name, value, field) => {
    expect(parse('nova', value)).toMatchObject({ kind: 'malformed', field });
  });

  it('refuses values over 64 KiB without parsing and bytes that are not UTF-8', () => {
    expect(parse('nova', Buffer.alloc(MAX_LEGACY_VALUE_BYTES + 1, 0x20))).toMatchObject({
      kind: 'malformed',
      field: 'value',
      reason: 'larger than 64 KiB',
    });
    expect(parse('nova', Buffer.from([0x7b, 0xff, 0x7d]))).toMatchObject({ kind: 'malformed', field: 'value', reason: 'not UTF-8' });
  });

  it('writes what it reads, in consoleauth field order', () => {
    const value = novaTokenValue(
      TOKEN,
      {
        instanceUuid: INSTANCE,
        consoleType: 'serial',
        host: 'fd00::7',
        port: 10000,
        internalAccessPath: null,
        accessUrl: 'ws://p.example:6083/?token=x',
      },
      1_700_000_000_500,
    );
    expect(Object.keys(JSON.parse(value))).toEqual([
      'token',
      'instance_uuid',
      'console_type',
      'host',
      'port',
      'internal_access_path',
      'access_url',
      'last_activity_at',
    ]);
    expect(JSON.parse(value).last_activity_at).toBe(1_700_000_000.5);
    expect(parse('nova', value)).toMatchObject({
      kind: 'authorization',
      authorization: { host: 'fd00::7', port: 10000, consoleType: 'serial', accessUrlBase: 'ws://p.example:6083/' },
    });
  });
});

describe('websockify TokenRedis values', () => {
  it.each([
    ['{"host": "10.0.0.5:5900"}', '10.0.0.5', 5900],
    ['10.0.0.6:5901', '10.0.0.6', 5901],
    ['  compute-1.example:5902\n', 'compute-1.example', 5902],
    ['{"host": "[::1]:5903"}', '::1', 5903],
    ['[fd00::9]:5904', 'fd00::9', 5904],
    ['{"host": "h:5905", "extra": 1}', 'h', 5905],
  ])('reads %j', (value, host, port) => {
    expect(parse('websockify', value)).toEqual({
      kind: 'authorization',
      authorization: { instanceUuid: null, consoleType: null, host, port, internalAccessPath: null, accessUrlBase: null },
    });
  });

  it.each([
    ['{"host": 5}', 'host'],
    ['{"port": 5900}', 'host'],
    ['{"host": "h:0"}', 'port'],
    ['{"host": "h"}', 'value'],
    ['{not json', 'value'],
    ['h:abc', 'port'],
    ['::1:5900', 'value'],
    ['[not-ipv6]:5900', 'host'],
    ['["10.0.0.1:5900"]', 'host'],
    ['', 'value'],
  ])('refuses %j', (value, field) => {
    expect(parse('websockify', value)).toMatchObject({ kind: 'malformed', field });
  });

  it('writes {"host": "HOST:PORT"} with IPv6 in brackets', () => {
    expect(websockifyTokenValue('10.0.0.5', 5900)).toBe('{"host":"10.0.0.5:5900"}');
    expect(websockifyTokenValue('fd00::1', 5900)).toBe('{"host":"[fd00::1]:5900"}');
  });
});
