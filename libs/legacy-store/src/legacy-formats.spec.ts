import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  MAX_LEGACY_VALUE_BYTES,
  novaTokenJsonForPython,
  novaTokenListForPython,
  novaTokenValue,
  osloCacheKey,
  osloCacheValue,
  parseLegacyValue,
  parseOsloCacheValue,
  websockifyTokenValue,
} from './legacy-formats';

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

describe('oslo-cache-redis values (consoleauth through oslo.cache and dogpile.cache)', () => {
  /** Real bytes from test/fixtures/legacy/generate-oslo-cache.py (oslo.cache 3.2.0, dogpile.cache 1.1.8). */
  const fixture = JSON.parse(readFileSync(join(__dirname, '../../../test/fixtures/legacy/oslo-cache-redis.json'), 'utf8')) as {
    tokens: { name: string; token: string; instanceUuid: string; consoleType: string; host: string; port: number; accessUrl: string }[];
    instances: Record<string, string>;
    entries: { key: string; valueBase64: string; describes: string }[];
  };
  const valueOf = (key: string): Buffer => Buffer.from(fixture.entries.find((entry) => entry.key === key)!.valueBase64, 'base64');

  it('reads the token dict under sha1(token), the token taken from the dict, and dogpile ct', () => {
    for (const written of fixture.tokens) {
      const key = osloCacheKey(written.token);
      const raw = valueOf(key);
      const ct = (JSON.parse(raw.subarray(0, raw.indexOf(0x7c)).toString()) as { ct: number }).ct;
      expect(parseOsloCacheValue(raw, key)).toEqual({
        kind: 'authorization',
        token: written.token,
        createdAt: ct,
        authorization: {
          instanceUuid: written.instanceUuid,
          consoleType: written.consoleType,
          host: written.host,
          port: written.port,
          internalAccessPath: null,
          accessUrlBase: written.accessUrl.slice(0, written.accessUrl.indexOf('?')),
        },
      });
    }
  });

  it("reads an instance's list under sha1(instance_uuid), and refuses the pickled dict another cache user stored", () => {
    const instanceA = fixture.instances.a;
    const parsed = parseOsloCacheValue(valueOf(osloCacheKey(instanceA)), osloCacheKey(instanceA));
    expect(parsed).toMatchObject({
      kind: 'instance-list',
      tokens: fixture.tokens.filter((token) => token.instanceUuid === instanceA).map((token) => token.token),
    });
    const other = fixture.entries.find((entry) => entry.describes === 'other-cache-entry')!;
    expect(parseOsloCacheValue(Buffer.from(other.valueBase64, 'base64'), other.key)).toEqual({
      kind: 'not-a-token',
      reason: 'pickle does not hold a single str',
    });
  });

  it('writes what consoleauth wrote through oslo.cache, byte for byte', () => {
    for (const written of fixture.tokens) {
      const key = osloCacheKey(written.token);
      const raw = valueOf(key);
      const ct = (JSON.parse(raw.subarray(0, raw.indexOf(0x7c)).toString()) as { ct: number }).ct;
      const lastActivityAt = Number(/"last_activity_at": ([0-9.]+)/.exec(raw.toString('latin1'))![1]);
      const ours = osloCacheValue(
        novaTokenJsonForPython(
          written.token,
          {
            instanceUuid: written.instanceUuid,
            consoleType: written.consoleType,
            host: written.host,
            port: written.port,
            internalAccessPath: null,
            accessUrl: written.accessUrl,
          },
          lastActivityAt * 1000,
        ),
        ct,
      );
      expect(ours.toString('latin1')).toBe(raw.toString('latin1'));
    }
    const instanceA = fixture.instances.a;
    const listRaw = valueOf(osloCacheKey(instanceA));
    const listCt = (JSON.parse(listRaw.subarray(0, listRaw.indexOf(0x7c)).toString()) as { ct: number }).ct;
    const listed = fixture.tokens.filter((token) => token.instanceUuid === instanceA).map((token) => token.token);
    expect(osloCacheValue(novaTokenListForPython(listed), listCt).equals(listRaw)).toBe(true);
  });

  it('escapes like Python json.dumps (ensure_ascii) and writes whole floats with .0', () => {
    const text = novaTokenJsonForPython(
      'tök',
      { instanceUuid: INSTANCE, consoleType: 'novnc', host: 'h', port: 1, internalAccessPath: null, accessUrl: 'http://x/\u007f😀' },
      1_700_000_000_000,
    );
    expect(text).toBe(
      `{"token": "t\\u00f6k", "instance_uuid": "${INSTANCE}", "console_type": "novnc", "host": "h", "port": 1, ` +
        `"internal_access_path": null, "access_url": "http://x/\\u007f\\ud83d\\ude00", "last_activity_at": 1700000000.0}`,
    );
  });

  it.each([
    ['no metadata', Buffer.from('just a pickle'), { kind: 'malformed', field: 'metadata', reason: "no dogpile metadata (JSON then '|')" }],
    ['metadata not JSON', Buffer.from('{ct|x'), { kind: 'malformed', field: 'metadata', reason: 'not JSON' }],
    ['no ct', Buffer.from('{"v": 2}|x'), { kind: 'malformed', field: 'metadata', reason: 'no creation time (ct)' }],
    [
      'another dogpile value version',
      Buffer.from('{"ct": 1.5, "v": 1}|x'),
      { kind: 'malformed', field: 'metadata', reason: 'not dogpile value version 2' },
    ],
    [
      'a truncated pickle',
      Buffer.from('{"ct": 1.5, "v": 2}|\x80\x04\x8c\x05ab', 'latin1'),
      { kind: 'malformed', field: 'pickle', reason: 'truncated pickle' },
    ],
    ['a pickled str that is not JSON', osloCacheValue('not json', 1.5), { kind: 'malformed', field: 'value', reason: 'not JSON' }],
    [
      'a list of numbers',
      osloCacheValue('[1, 2]', 1.5),
      { kind: 'malformed', field: 'value', reason: 'a list of something else than tokens' },
    ],
    [
      'a dict without token',
      osloCacheValue('{"instance_uuid": "x"}', 1.5),
      { kind: 'malformed', field: 'token', reason: 'missing, or its sha1 is not the key' },
    ],
    [
      'a dict of another token',
      osloCacheValue(`{"token": "other"}`, 1.5),
      { kind: 'malformed', field: 'token', reason: 'missing, or its sha1 is not the key' },
    ],
    [
      'a bad port',
      osloCacheValue(`{"token": "${TOKEN}", "instance_uuid": "${INSTANCE}", "console_type": "novnc", "host": "h", "port": 0}`, 1.5),
      { kind: 'malformed', field: 'port', reason: 'not an integer 1..65535' },
    ],
    ['oversized', Buffer.alloc(MAX_LEGACY_VALUE_BYTES + 1, 0x20), { kind: 'malformed', field: 'value', reason: 'larger than 64 KiB' }],
  ])('refuses %s', (_name, raw, expected) => {
    expect(parseOsloCacheValue(raw, osloCacheKey(TOKEN))).toEqual(expected);
  });
});
