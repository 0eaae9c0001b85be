import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { queryDatabase, SessionRow } from '../support/databases';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';

/*
 * Small helpers shared by the token API end-to-end tests. They compute what a client computes
 * (hashes, key parts) independently of the product code, so a bug there cannot hide itself.
 */

export type ApiResponse = Awaited<ReturnType<typeof call>>;

/** SHA-256 hex of a token (UTF-8) or of bytes, computed here rather than with the product's own helper. */
export function sha256(value: Buffer | string): string {
  return createHash('sha256').update(value).digest('hex');
}

/** What logs and the API show instead of a token: the first 12 hex of its SHA-256. */
export function fingerprintOf(token: string): string {
  return sha256(token).slice(0, 12);
}

/** The two parts of an API key `khk_<id>_<secret>`. */
export function keyParts(key: string): { id: string; secret: string } {
  const match = /^khk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$/.exec(key);
  if (!match) {
    throw new Error('not an API key of the documented format');
  }
  return { id: match[1], secret: match[2] };
}

/** A secret of the right shape that no credential has. */
export function randomSecret(): string {
  return randomBytes(32).toString('base64url');
}

/** A valid issue body for a fresh instance; override any field. */
export function issueBody(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return { instanceUuid: randomUUID(), consoleType: 'novnc', host: '192.0.2.10', port: 5900, ...overrides };
}

/**
 * Asserts an error answer: its status and code, the exact body shape `{code, message, requestId,
 * details?}`, and the `X-Request-Id` header equal to the body's requestId.
 */
export function expectError(response: ApiResponse, status: number, code: string): void {
  expect({ status: response.status, code: response.body?.code }).toEqual({ status, code });
  const keys = Object.keys(response.body).sort();
  expect(['code', 'message', 'requestId', 'details'].filter((key) => keys.includes(key)).sort()).toEqual(keys);
  expect(keys).toEqual(expect.arrayContaining(['code', 'message', 'requestId']));
  expect(typeof response.body.message).toBe('string');
  expect(response.body.message.length).toBeGreaterThan(0);
  expect(typeof response.body.requestId).toBe('string');
  expect(response.body.requestId).not.toBe('unknown');
  expect(response.headers.get('x-request-id')).toBe(response.body.requestId);
  expect(response.headers.get('content-type')).toMatch(/^application\/json/);
}

/** The error body without its per-request id, to compare two answers. */
export function withoutRequestId(body: Record<string, unknown>): Record<string, unknown> {
  const { requestId: _requestId, ...rest } = body;
  return rest;
}

/** The distinct field names an INVALID_INPUT answer names, sorted. */
export function invalidFields(response: ApiResponse): string[] {
  const fields = (response.body?.details?.fields ?? []) as { field: string }[];
  return [...new Set(fields.map((entry) => entry.field))].sort();
}

/**
 * A token row written straight into a cell database, as Nova writes it (no API, so no route is
 * checked): a fresh random token for a noVNC console at `host`:`port`, valid 10 minutes. Returns the token.
 */
export async function insertTokenRow(cellUrl: string, row: { host: string; port: number; accessUrlBase: string }): Promise<string> {
  const token = randomBytes(32).toString('base64url');
  await queryDatabase(
    cellUrl,
    `INSERT INTO console_auth_tokens (token_hash, console_type, host, port, instance_uuid, expires, access_url_base)
     VALUES ($1, 'novnc', $2, $3, $4, $5, $6)`,
    [sha256(token), row.host, row.port, randomUUID(), Math.floor(Date.now() / 1000) + 600, row.accessUrlBase],
  );
  return token;
}

/** The console_sessions rows of a token in a cell database, oldest first. */
export function sessionRowsOf(cellUrl: string, tokenId: number): Promise<SessionRow[]> {
  return queryDatabase<SessionRow>(cellUrl, 'SELECT * FROM console_sessions WHERE token_id = $1 ORDER BY started_at', [tokenId]);
}

/** The one session row of a token, once it has ended and its end is recorded. */
export function endedSessionOf(cellUrl: string, tokenId: number, timeoutMs = 5_000): Promise<SessionRow> {
  return waitUntil(
    async () => {
      const rows = await sessionRowsOf(cellUrl, tokenId);
      return rows.length === 1 && rows[0].ended_at !== null ? rows[0] : undefined;
    },
    timeoutMs,
    `the session of token ${tokenId} to be recorded as ended`,
  );
}

/** How many console_auth_tokens rows a cell database holds. */
export async function countTokenRows(cellUrl: string, where = 'TRUE', parameters: unknown[] = []): Promise<number> {
  const [row] = await queryDatabase<{ count: string }>(
    cellUrl,
    `SELECT count(*)::text AS count FROM console_auth_tokens WHERE ${where}`,
    parameters,
  );
  return Number(row.count);
}

/**
 * Every value of every row of every table of a database's public and keyhole schemas, as text (binary columns
 * both as UTF-8 and hex), keyed by table: what someone with a dump of the database would see.
 */
export async function dumpDatabase(url: string): Promise<Record<string, string>> {
  const tables = await queryDatabase<{ table_schema: string; table_name: string }>(
    url,
    `SELECT table_schema, table_name FROM information_schema.tables
      WHERE table_schema IN ('public', 'keyhole') AND table_type = 'BASE TABLE' ORDER BY table_name, table_schema`,
  );
  const dump: Record<string, string> = {};
  for (const { table_schema: schema, table_name: table } of tables) {
    const quote = (name: string) => `"${name.replace(/"/g, '""')}"`;
    const rows = await queryDatabase(url, `SELECT * FROM ${quote(schema)}.${quote(table)}`);
    dump[table] = rows
      .map((row) =>
        Object.values(row)
          .map((value) => (Buffer.isBuffer(value) ? `${value.toString('utf8')} ${value.toString('hex')}` : JSON.stringify(value)))
          .join('\t'),
      )
      .join('\n');
  }
  return dump;
}
