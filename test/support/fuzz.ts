/*
 * The fuzz tests' randomness: a small seeded generator (mulberry32) and input mutators. A run is
 * reproducible from its seed (KEYHOLE_FUZZ_SEED), each case from the seed and its index, and every
 * failure names both, so `KEYHOLE_FUZZ_SEED=S npx jest ...` replays what failed.
 */

/** The seed of every fuzz file when KEYHOLE_FUZZ_SEED is not set ("keyh" in ASCII). */
const DEFAULT_SEED = 0x6b657968;

export interface FuzzSettings {
  seed: number;
  /** Cases to run: KEYHOLE_FUZZ_CASES, else the file's default. */
  cases: number;
}

/** The run's seed and case count, from the environment or the file's defaults. */
export function fuzzSettings(defaultCases: number): FuzzSettings {
  return {
    seed: integerFromEnvironment('KEYHOLE_FUZZ_SEED', DEFAULT_SEED, 0, 0xffffffff),
    cases: integerFromEnvironment('KEYHOLE_FUZZ_CASES', defaultCases, 1, 1_000_000),
  };
}

function integerFromEnvironment(name: string, fallback: number, min: number, max: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') {
    return fallback;
  }
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new Error(`${name} must be an integer from ${min} to ${max}, not ${JSON.stringify(text)}`);
  }
  return value;
}

/** A deterministic pseudo-random source (mulberry32): not for secrets, for reproducible inputs. */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** The generator of case `index` of a run: independent of the cases before it. */
  static forCase(seed: number, index: number): Random {
    return new Random(Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(index + 1, 0xc2b2ae35));
  }

  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }

  /** An integer in [min, max]. */
  integer(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  chance(probability: number): boolean {
    return this.next() < probability;
  }

  pick<T>(values: readonly T[]): T {
    return values[this.integer(0, values.length - 1)];
  }

  /** Picks by weight: `[[weight, value], ...]`. */
  weighted<T>(choices: readonly (readonly [number, T])[]): T {
    const total = choices.reduce((sum, [weight]) => sum + weight, 0);
    let roll = this.next() * total;
    for (const [weight, value] of choices) {
      roll -= weight;
      if (roll < 0) {
        return value;
      }
    }
    return choices[choices.length - 1][1];
  }

  /** `length` characters of `alphabet`. */
  stringOf(alphabet: string, length: number): string {
    let text = '';
    for (let index = 0; index < length; index += 1) {
      text += alphabet[this.integer(0, alphabet.length - 1)];
    }
    return text;
  }

  /**
   * A string to plant in a request and look for in answers and logs: unique to case `index`, with
   * upper case and an underscore so that no rule can take it for a cell name, an id or a UUID.
   */
  marker(index: number): string {
    return `Fz_${index.toString(36)}_${this.stringOf('ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789', 20)}`;
  }

  /** Bytes, for raw protocol input. */
  bytes(length: number): Buffer {
    const bytes = Buffer.alloc(length);
    for (let index = 0; index < length; index += 1) {
      bytes[index] = this.integer(0, 255);
    }
    return bytes;
  }

  /** A string that is hard on parsers: control characters, NULs, astral and combining characters, lone surrogates. */
  nastyString(maxLength = 64): string {
    const pieces = [
      '\u0000',
      '\u0001',
      '\u001f',
      '\u007f',
      '\r\n',
      '\t',
      ' ',
      '"',
      "'",
      '\\',
      '%',
      '%00',
      '%zz',
      '../',
      '?',
      '#',
      '&',
      '=',
      ';',
      ',',
      '\u00e9',
      '\u0301',
      '\u200b',
      '\u202e',
      '\ufeff',
      '\ufffd',
      '\ud83d\udd11',
      '\ud800',
      '\udfff',
      '\u4e2d',
      '${x}',
      '{{x}}',
      '<script>',
      "' OR 1=1 --",
      'NaN',
      '-0',
      '1e309',
    ];
    let text = '';
    const length = this.integer(0, maxLength);
    while (text.length < length) {
      text += this.chance(0.6) ? this.pick(pieces) : this.stringOf('abcXYZ019-_.:/@', this.integer(1, 8));
    }
    return text;
  }

  /** A number at or near a bound a validator may get wrong. */
  edgeNumber(): number {
    return this.pick([
      0,
      -0,
      -1,
      1,
      0.5,
      65_535,
      65_536,
      2_147_483_647,
      2_147_483_648,
      4_294_967_296,
      Number.MAX_SAFE_INTEGER,
      Number.MAX_SAFE_INTEGER + 2,
      -Number.MAX_SAFE_INTEGER,
      1e21,
      1e308,
      5e-324,
      31_536_000,
      31_536_001,
    ]);
  }

  /** A JSON value of any type, nested up to `depth`. */
  jsonValue(depth = 2): unknown {
    const kind = this.integer(0, depth > 0 ? 7 : 5);
    switch (kind) {
      case 0:
        return null;
      case 1:
        return this.chance(0.5);
      case 2:
        return this.edgeNumber();
      case 3:
        return this.nastyString();
      case 4:
        return '';
      case 5:
        return this.integer(-10, 70_000);
      case 6:
        return Array.from({ length: this.integer(0, 3) }, () => this.jsonValue(depth - 1));
      default:
        return Object.fromEntries(Array.from({ length: this.integer(0, 3) }, () => [this.nastyString(8), this.jsonValue(depth - 1)]));
    }
  }
}

/**
 * Runs `cases` cases with at most `concurrency` at a time, each with its own generator, stopping
 * early (without failing) once `budgetMs` has passed. A case that throws fails the run with the
 * seed and the case's index in the message. Resolves with how many cases ran.
 */
export async function runFuzzCases(
  settings: FuzzSettings,
  options: { concurrency: number; budgetMs: number },
  runCase: (random: Random, index: number) => Promise<void>,
): Promise<number> {
  const deadline = Date.now() + options.budgetMs;
  let nextIndex = 0;
  let ran = 0;
  let failure: Error | undefined;
  const worker = async (): Promise<void> => {
    while (failure === undefined && nextIndex < settings.cases && Date.now() < deadline) {
      const index = nextIndex;
      nextIndex += 1;
      try {
        await runCase(Random.forCase(settings.seed, index), index);
        ran += 1;
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        failure ??= new Error(`fuzz case ${index} failed (reproduce with KEYHOLE_FUZZ_SEED=${settings.seed}):\n${message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  if (failure) {
    throw failure;
  }
  return ran;
}
