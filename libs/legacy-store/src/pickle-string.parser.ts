/*
 * A reader for exactly one kind of Python pickle: the one `pickle.dumps(some_str)` writes under
 * protocols 2..5 (Python 3's defaults are 3 up to 3.7, 4 from 3.8, 5 from 3.14). It is a byte
 * grammar, not an unpickler: it never executes, imports, calls or builds anything, and it has no
 * stack or memo. Any opcode outside that grammar (GLOBAL, STACK_GLOBAL, REDUCE, BUILD, NEWOBJ, INST,
 * OBJ, EXT*, PERSID, a container, a number, a second string...) makes the whole value refused.
 *
 * The accepted sequence, and nothing else:
 *
 *   PROTO n                       0x80 n, n in 2..5
 *   [FRAME len]                   0x95 u64le, n >= 4; len must be exactly the bytes that follow
 *   one string opcode:
 *     SHORT_BINUNICODE            0x8c u8 len, n >= 4
 *     BINUNICODE                  'X'  u32le len
 *     BINUNICODE8                 0x8d u64le len, n >= 4
 *   [one memo opcode]             MEMOIZE 0x94 (n >= 4) or BINPUT 'q' u8 / LONG_BINPUT 'r' u32le (n < 4)
 *   STOP                          '.'
 *
 * with no byte after STOP. The string must be strict UTF-8 (Python writes lone surrogates with
 * `surrogatepass`, which is not UTF-8: refused) of at most `maxBytes` bytes. Protocol 0 and 1
 * pickles (no PROTO opcode) are refused: Python 3 never writes them by default.
 */

const PROTO = 0x80;
const FRAME = 0x95;
const SHORT_BINUNICODE = 0x8c;
const BINUNICODE = 0x58; // 'X'
const BINUNICODE8 = 0x8d;
const MEMOIZE = 0x94;
const BINPUT = 0x71; // 'q'
const LONG_BINPUT = 0x72; // 'r'
const STOP = 0x2e; // '.'

const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

/** The one string a pickle encodes, or why it was refused (the reason never quotes the bytes). */
export type PickledString = { ok: true; value: string } | { ok: false; reason: string };

/**
 * Reads the str that `pickle.dumps(str)` wrote, refusing every other pickle; never executes
 * anything (see the grammar at the top of this file). `maxBytes` bounds the string's UTF-8 length.
 */
export function parsePickledString(data: Uint8Array, maxBytes: number): PickledString {
  const refuse = (reason: string): PickledString => ({ ok: false, reason });
  let offset = 0;
  const remaining = (): number => data.length - offset;

  if (remaining() < 2 || data[offset] !== PROTO) {
    return refuse('not a pickle of protocol 2 or later');
  }
  const protocol = data[offset + 1];
  if (protocol < 2 || protocol > 5) {
    return refuse('unsupported pickle protocol');
  }
  offset += 2;

  if (data[offset] === FRAME) {
    if (protocol < 4) {
      return refuse('FRAME before protocol 4');
    }
    const frameLength = readLength(data, offset + 1, 8);
    if (frameLength === undefined) {
      return refuse('truncated pickle');
    }
    offset += 9;
    // One frame holding the rest: what Python writes for a string that fits in a frame (< 64 KiB).
    if (frameLength !== remaining()) {
      return refuse('pickle frame does not cover the value');
    }
  }

  const opcode = data[offset];
  let length: number | undefined;
  if (opcode === SHORT_BINUNICODE && protocol >= 4) {
    length = readLength(data, offset + 1, 1);
    offset += 2;
  } else if (opcode === BINUNICODE) {
    length = readLength(data, offset + 1, 4);
    offset += 5;
  } else if (opcode === BINUNICODE8 && protocol >= 4) {
    length = readLength(data, offset + 1, 8);
    offset += 9;
  } else {
    return refuse('pickle does not hold a single str');
  }
  if (length === undefined || offset > data.length) {
    return refuse('truncated pickle');
  }
  if (length > maxBytes) {
    return refuse('pickled str too large');
  }
  if (length > remaining()) {
    return refuse('truncated pickle');
  }
  let value: string;
  try {
    value = STRICT_UTF8.decode(data.subarray(offset, offset + length));
  } catch {
    return refuse('pickled str is not UTF-8');
  }
  offset += length;

  if (protocol >= 4 && data[offset] === MEMOIZE) {
    offset += 1;
  } else if (protocol < 4 && data[offset] === BINPUT) {
    offset += 2;
  } else if (protocol < 4 && data[offset] === LONG_BINPUT) {
    offset += 5;
  }
  if (offset >= data.length || data[offset] !== STOP) {
    return refuse(offset >= data.length ? 'truncated pickle' : 'pickle does not hold a single str');
  }
  offset += 1;
  if (offset !== data.length) {
    return refuse('bytes after the pickle');
  }
  return { ok: true, value };
}

/** A little-endian unsigned length of `size` bytes; undefined when truncated or beyond 2^53. */
function readLength(data: Uint8Array, offset: number, size: 1 | 4 | 8): number | undefined {
  if (offset + size > data.length) {
    return undefined;
  }
  let value = 0;
  for (let index = size - 1; index >= 0; index -= 1) {
    value = value * 256 + data[offset + index];
  }
  return Number.isSafeInteger(value) ? value : undefined;
}

/**
 * `pickle.dumps(value)` as Python 3.8+ writes it (protocol 4, the default): PROTO 4, one FRAME, the
 * string (SHORT_BINUNICODE under 256 bytes, BINUNICODE otherwise), MEMOIZE, STOP. Byte for byte what
 * CPython's pickler produces for a str shorter than 64 KiB (beyond which it leaves the frame).
 */
export function pickleString(value: string): Buffer {
  const text = Buffer.from(value, 'utf8');
  if (text.length >= 64 * 1024) {
    throw new RangeError('pickleString: strings of 64 KiB or more are not supported');
  }
  const header = text.length < 256 ? Buffer.from([SHORT_BINUNICODE, text.length]) : Buffer.alloc(5);
  if (text.length >= 256) {
    header[0] = BINUNICODE;
    header.writeUInt32LE(text.length, 1);
  }
  const body = Buffer.concat([header, text, Buffer.from([MEMOIZE, STOP])]);
  const frame = Buffer.alloc(9);
  frame[0] = FRAME;
  frame.writeBigUInt64LE(BigInt(body.length), 1);
  return Buffer.concat([Buffer.from([PROTO, 4]), frame, body]);
}
