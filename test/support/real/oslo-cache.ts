import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/*
 * Nova consoleauth's storage, for real: the Python scripts in test/fixtures/legacy run Stein's
 * authorize_console / check_token / delete_tokens_for_instance on Debian's nova.cache_utils,
 * oslo.cache and dogpile.cache (python3-nova, python3-oslo.cache, python3-redis, installed by
 * .ci/run). Nothing here is simulated in TypeScript: a missing package fails the test.
 */

const PYTHON = '/usr/bin/python3';
const FIXTURES = join(__dirname, '../../fixtures/legacy');
const RUN_TIMEOUT_MS = 30_000;

/** One raw Redis entry of a dump: key, value bytes (base64), PTTL and what it is. */
export interface OsloCacheFixtureEntry {
  key: string;
  valueBase64: string;
  pttlMs: number;
  /** live-novnc, live-serial, live-spice, expired-novnc, instance-list, other-cache-entry */
  describes: string;
}

/** A token consoleauth authorized, as the generator recorded it. */
export interface OsloCacheFixtureToken {
  name: string;
  token: string;
  instanceUuid: string;
  consoleType: string;
  host: string;
  port: number;
  internalAccessPath: string | null;
  accessUrl: string | null;
}

/** What generate-oslo-cache.py writes (and test/fixtures/legacy/oslo-cache-redis.json holds). */
export interface OsloCacheDump {
  versions: Record<string, string>;
  tokenTtlSeconds: number;
  /** Epoch seconds. */
  generatedAt: number;
  instances: { a: string; b: string; c: string };
  tokens: OsloCacheFixtureToken[];
  entries: OsloCacheFixtureEntry[];
}

/** The committed fixture: real bytes written by oslo.cache 3.2.0 + dogpile.cache 1.1.8 (Python 3.11). */
export function committedOsloCacheFixture(): OsloCacheDump {
  return JSON.parse(readFileSync(join(FIXTURES, 'oslo-cache-redis.json'), 'utf8')) as OsloCacheDump;
}

function runPython(script: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(PYTHON, [join(FIXTURES, script), ...args], { timeout: RUN_TIMEOUT_MS }, (error, stdout, stderr) => {
      if (error) {
        reject(new Error(`${script} failed: ${error.message}\n${stderr}`));
      } else {
        resolve(stdout);
      }
    });
    child.stdin?.end(input ?? '');
  });
}

/**
 * Runs the generator against `redisUrl` (an empty database): consoleauth authorizes the fixture's
 * tokens (the names of OsloCacheFixtureToken; `tokens` fixes their values) and the dump is returned.
 */
export async function generateOsloCacheEntries(
  redisUrl: string,
  options: { tokens?: Record<string, string>; port?: number; tokenTtlSeconds?: number } = {},
): Promise<OsloCacheDump> {
  const directory = await mkdtemp(join(tmpdir(), 'keyhole-oslo-cache-'));
  try {
    const args = ['--url', redisUrl, '--out', join(directory, 'dump.json')];
    if (options.tokens) {
      await writeFile(join(directory, 'tokens.json'), JSON.stringify(options.tokens), { mode: 0o600 });
      args.push('--tokens-from', join(directory, 'tokens.json'));
    }
    if (options.port !== undefined) {
      args.push('--port', String(options.port));
    }
    if (options.tokenTtlSeconds !== undefined) {
      args.push('--token-ttl', String(options.tokenTtlSeconds));
    }
    await runPython('generate-oslo-cache.py', args);
    return JSON.parse(await readFile(join(directory, 'dump.json'), 'utf8')) as OsloCacheDump;
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
}

/** What consoleauth's check_token returned for each token (null = invalid) and each instance's list. */
export interface ConsoleauthReading {
  tokens: Record<string, Record<string, unknown> | null>;
  instances: Record<string, string[]>;
}

/** What consoleauth's authorize_console takes (the RPC's arguments). */
export interface ConsoleauthAuthorization {
  token: string;
  console_type: string;
  host: string;
  port: number;
  internal_access_path?: string | null;
  instance_uuid: string;
  access_url?: string | null;
}

/**
 * consoleauth works on `redisUrl`: authorize_console for `authorize`, then check_token for
 * `tokens` and _get_tokens_for_instance for `instances`, then delete_tokens_for_instance for
 * `deleteInstances`.
 */
export async function consoleauthRead(
  redisUrl: string,
  request: { authorize?: ConsoleauthAuthorization[]; tokens?: string[]; instances?: string[]; deleteInstances?: string[] },
  options: { tokenTtlSeconds?: number } = {},
): Promise<ConsoleauthReading> {
  const args = ['--url', redisUrl];
  if (options.tokenTtlSeconds !== undefined) {
    args.push('--token-ttl', String(options.tokenTtlSeconds));
  }
  return JSON.parse(await runPython('consoleauth-read.py', args, JSON.stringify(request))) as ConsoleauthReading;
}
