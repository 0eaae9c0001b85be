import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parsePickledString, pickleString } from './pickle-string.parser';

/** Real bytes: what oslo.cache + dogpile.cache wrote into Redis (test/fixtures/legacy/generate-oslo-cache.py). */
const fixture = JSON.parse(readFileSync(join(__dirname, '../../../test/fixtures/legacy/oslo-cache-redis.json'), 'utf8')) as {
  entries: { key: string; valueBase64: string; describes: string }[];
};

function pickleOf(entry: { valueBase64: string }): Buffer {
  const raw = Buffer.from(entry.valueBase64, 'base64');
  return raw.subarray(raw.indexOf(0x7c) + 1); // after dogpile's `metadata|`
}

const hex = (text: string): Buffer => Buffer.from(text, 'hex');
const LIMIT = 64 * 1024;

describe('parsePickledString', () => {
  it("reads the str of every consoleauth entry oslo.cache wrote (Python 3.11's protocol 4, BINUNICODE and SHORT_BINUNICODE)", () => {
    const strings = fixture.entries.filter((entry) => entry.describes !== 'other-cache-entry');
    expect(strings.length).toBeGreaterThanOrEqual(7);
    for (const entry of strings) {
      const parsed = parsePickledString(pickleOf(entry), LIMIT);
      expect(parsed).toEqual({ ok: true, value: expect.any(String) });
      if (parsed.ok) {
        // Each is JSON: a token dict or an instance's token list.
        expect(() => JSON.parse(parsed.value) as unknown).not.toThrow();
      }
    }
  });

  it("refuses the other oslo.cache entry of the fixture (a pickled dict, as Nova's metadata cache stored)", () => {
    const other = fixture.entries.find((entry) => entry.describes === 'other-cache-entry')!;
    expect(parsePickledString(pickleOf(other), LIMIT)).toEqual({ ok: false, reason: 'pickle does not hold a single str' });
  });

  it.each([
    // pickle.dumps('héllo ☃', protocol=p), from CPython 3.11
    [2, '8002580a00000068c3a96c6c6f20e2988371002e'],
    [3, '8003580a00000068c3a96c6c6f20e2988371002e'],
    [4, '8004950e000000000000008c0a68c3a96c6c6f20e29883942e'],
    [5, '8005950e000000000000008c0a68c3a96c6c6f20e29883942e'],
  ])('reads protocol %i', (_protocol, bytes) => {
    expect(parsePickledString(hex(bytes), LIMIT)).toEqual({ ok: true, value: 'héllo ☃' });
  });

  it('reads the empty string and a string without memo (pickletools.optimize output)', () => {
    expect(parsePickledString(hex('80049504000000000000008c00942e'), LIMIT)).toEqual({ ok: true, value: '' });
    expect(parsePickledString(hex('80048c03616263 2e'.replace(' ', '')), LIMIT)).toEqual({ ok: true, value: 'abc' });
  });

  it.each([
    [
      'GLOBAL + REDUCE (os.system, protocol 0 style)',
      Buffer.from("cos\nsystem\n(S'echo pwned'\ntR.", 'latin1'),
      'not a pickle of protocol 2 or later',
    ],
    [
      'GLOBAL + REDUCE after PROTO',
      Buffer.concat([hex('8002'), Buffer.from('cos\nsystem\nX\x02\x00\x00\x00id\x85R.', 'latin1')]),
      'pickle does not hold a single str',
    ],
    [
      'STACK_GLOBAL (pickle.dumps(os.system))',
      hex('80049514000000000000008c05706f736978948c0673797374656d9493942e'),
      'pickle does not hold a single str',
    ],
    ['a list', hex('80049508000000000000005d948c016194612e'), 'pickle does not hold a single str'],
    ['a tuple of two strings', hex('8004950b000000000000008c0161948c01629486942e'), 'pickle does not hold a single str'],
    ['two strings in a row', hex('80048c0161948c0162942e'), 'pickle does not hold a single str'],
    ['a string then REDUCE', hex('80048c016194522e'), 'pickle does not hold a single str'],
    ['bytes, not str', hex('80049507000000000000004303616263942e'), 'pickle does not hold a single str'],
    ['protocol 0', hex('566162630a70300a2e'), 'not a pickle of protocol 2 or later'],
    ['protocol 6', hex('80068c0161942e'), 'unsupported pickle protocol'],
    ['SHORT_BINUNICODE in protocol 3', hex('80038c0161942e'), 'pickle does not hold a single str'],
    ['MEMOIZE in protocol 3', hex('8003580100000061942e'), 'pickle does not hold a single str'],
    ['FRAME in protocol 3', hex('800395070000000000000058010000006171002e'), 'FRAME before protocol 4'],
    ['a frame shorter than the rest', hex('8004950300000000000000 8c0161942e'.replace(' ', '')), 'pickle frame does not cover the value'],
    ['a frame longer than the rest', hex('8004951000000000000000 8c0161942e'.replace(' ', '')), 'pickle frame does not cover the value'],
    ['truncated in the string', hex('8004950e000000000000008c0a68c3a96c'), 'pickle frame does not cover the value'],
    ['truncated without frame', hex('80048c0a68c3a96c'), 'truncated pickle'],
    ['truncated before STOP', hex('80048c016194'), 'truncated pickle'],
    ['truncated length', hex('800358010000'), 'truncated pickle'],
    ['no STOP but another opcode', hex('80048c016194942e'), 'pickle does not hold a single str'],
    ['trailing data after STOP', hex('80048c0161942e00'), 'bytes after the pickle'],
    ['a second pickle after STOP', hex('80048c0161942e80048c0162942e'), 'bytes after the pickle'],
    ['a lone surrogate (surrogatepass)', hex('80048c03eda080942e'), 'pickled str is not UTF-8'],
    ['invalid UTF-8', hex('80048c02c328942e'), 'pickled str is not UTF-8'],
    ['a huge declared length', hex('80048dffffffffffffff7f'), 'truncated pickle'],
    ['empty', Buffer.alloc(0), 'not a pickle of protocol 2 or later'],
  ])('refuses %s', (_name, bytes, reason) => {
    expect(parsePickledString(bytes, LIMIT)).toEqual({ ok: false, reason });
  });

  it('refuses a str longer than the limit, before decoding it', () => {
    const pickled = pickleString('x'.repeat(300));
    expect(parsePickledString(pickled, 300)).toEqual({ ok: true, value: 'x'.repeat(300) });
    expect(parsePickledString(pickled, 299)).toEqual({ ok: false, reason: 'pickled str too large' });
  });
});

describe('pickleString', () => {
  it("writes what CPython 3.11's pickle.dumps writes (protocol 4), short and long", () => {
    expect(pickleString('héllo ☃').toString('hex')).toBe('8004950e000000000000008c0a68c3a96c6c6f20e29883942e');
    expect(pickleString('').toString('hex')).toBe('80049504000000000000008c00942e');
    // Every string in the fixture, re-pickled, gives oslo.cache's bytes back.
    for (const entry of fixture.entries.filter((candidate) => candidate.describes !== 'other-cache-entry')) {
      const original = pickleOf(entry);
      const parsed = parsePickledString(original, LIMIT);
      expect(parsed.ok).toBe(true);
      if (parsed.ok) {
        expect(pickleString(parsed.value).equals(original)).toBe(true);
      }
    }
  });
});
