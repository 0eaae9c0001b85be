import type { QueryRunner } from 'typeorm';

/**
 * How keyhole shares a cell database with Nova (README "Data"):
 *
 * - keyhole owns the PostgreSQL schema `keyhole` and creates nothing in `public`, which is Nova's.
 *   Nova's alembic migrations create and alter their tables by unqualified name, that is in
 *   `public`; a keyhole table there is a future collision (Nova's initial migration creates
 *   `console_auth_tokens`, its 2903cd72dc14 adds `tls_port` to it). In `keyhole`, none of Nova's
 *   migrations, past or future, can meet a keyhole object: they never name that schema.
 * - The cell's token table is Nova's `public.console_auth_tokens` when it exists, else keyhole's
 *   own `keyhole.console_auth_tokens` (Nova's columns, for a cell without Nova). keyhole never
 *   adds a column, constraint or trigger to Nova's table: its own per-token data lives in
 *   `keyhole.console_auth_token_extras`, keyed by token hash, without a foreign key into Nova's
 *   table (one would block Nova's own deletes and a future rebuild of the table). The only object
 *   keyhole adds to Nova's table is an index, `keyhole_console_auth_tokens_expires_idx`, for the
 *   purge: SQLAlchemy never sees indexes it did not declare, and alembic's autogenerate does not
 *   run in production.
 */
export const KEYHOLE_SCHEMA = 'keyhole';

/**
 * The search_path of every connection keyhole opens on a cell database: its own tables first, so
 * that an object Nova might one day create in `public` under one of keyhole's table names never
 * stands in for it. The token table is never reached through it: its statements name the table's
 * schema (see CellTokenTable).
 */
export const CELL_SEARCH_PATH = `${KEYHOLE_SCHEMA}, public`;

/** The libpq `options` that set CELL_SEARCH_PATH on each new connection (pg's `options`). */
export const CELL_CONNECTION_OPTIONS = `-c search_path=${CELL_SEARCH_PATH.replace(/ /g, '')}`;

/** The table keyhole keeps its own per-token data in (object version, issuer, tls_port). */
export const TOKEN_EXTRAS_TABLE = `${KEYHOLE_SCHEMA}.console_auth_token_extras`;

/** The purge's index on Nova's table; a `keyhole_` name so nothing of Nova's can collide with it. */
export const NOVA_EXPIRES_INDEX = 'keyhole_console_auth_tokens_expires_idx';

/** What keyhole reads of the token table, whichever it is. */
export const TOKEN_TABLE_REQUIRED_COLUMNS = [
  'id',
  'token_hash',
  'console_type',
  'host',
  'port',
  'internal_access_path',
  'instance_uuid',
  'expires',
  'access_url_base',
  'created_at',
  'updated_at',
] as const;

/** keyhole's tables as an older keyhole created them, in `public`, in the order they move. */
const OLD_LAYOUT_TABLES = ['keyhole_migrations', 'console_auth_tokens', 'console_sessions', 'cell_settings', 'revoked_token_hashes'];

/**
 * Run first in a cell migration's transaction: creates the `keyhole` schema and moves the tables
 * of a database that an older keyhole migrated (everything in `public`, `public.keyhole_migrations`
 * present) into it. ALTER TABLE ... SET SCHEMA carries the rows, indexes, constraints and owned
 * sequences; the ids and the migrations history stay as they were. `public.console_auth_tokens`
 * moves only when it is keyhole's (it has keyhole's `issued_by` column): an older keyhole could not
 * have run beside Nova's table, but a table of Nova's is never moved.
 */
export async function prepareCellSchema(queryRunner: QueryRunner): Promise<string[]> {
  await queryRunner.query(`CREATE SCHEMA IF NOT EXISTS ${KEYHOLE_SCHEMA}`);
  const [{ old, current }] = (await queryRunner.query(
    `SELECT to_regclass('public.keyhole_migrations') IS NOT NULL AS old,
            to_regclass('${KEYHOLE_SCHEMA}.keyhole_migrations') IS NOT NULL AS current`,
  )) as { old: boolean; current: boolean }[];
  if (!old) {
    return [];
  }
  if (current) {
    throw new Error(
      `both public.keyhole_migrations and ${KEYHOLE_SCHEMA}.keyhole_migrations exist: ` +
        'the database holds two keyhole layouts; move or drop one by hand',
    );
  }
  const moved: string[] = [];
  for (const table of OLD_LAYOUT_TABLES) {
    const [{ present, keyholes }] = (await queryRunner.query(
      `SELECT to_regclass($1) IS NOT NULL AS present,
              EXISTS (SELECT 1 FROM information_schema.columns
                       WHERE table_schema = 'public' AND table_name = $2 AND column_name = 'issued_by') AS keyholes`,
      [`public.${table}`, table],
    )) as { present: boolean; keyholes: boolean }[];
    if (!present || (table === 'console_auth_tokens' && !keyholes)) {
      continue;
    }
    await queryRunner.query(`ALTER TABLE public.${table} SET SCHEMA ${KEYHOLE_SCHEMA}`);
    moved.push(table);
  }
  return moved;
}

/** What adopting the tokens of keyhole's own table into Nova's did. */
export interface TokenAdoption {
  /** Valid rows now in Nova's table (console_sessions.token_id remapped to their new ids). */
  adopted: number;
  /** Expired rows dropped instead of copied. */
  expired: number;
  /**
   * Whether Nova's table has keyhole's purge index: 'not owner' when keyhole's database role does
   * not own Nova's table and so cannot index it (create it as Nova's role: see NOVA_EXPIRES_INDEX_SQL).
   */
  expiresIndex: 'present' | 'not owner';
}

/** The statement that gives Nova's table keyhole's purge index, for an operator to run as the table's owner. */
export const NOVA_EXPIRES_INDEX_SQL = `CREATE INDEX IF NOT EXISTS ${NOVA_EXPIRES_INDEX} ON public.console_auth_tokens (expires)`;

/**
 * Run last in a cell migration's transaction, when Nova's `public.console_auth_tokens` exists:
 * gives Nova's table the purge's index and moves every valid row of keyhole's own token table into
 * it (keyhole's own table was the token table until Nova's appeared: a cell whose keyhole was
 * migrated before `nova-manage db sync`). The rows keep their hash, so their extras need nothing;
 * the sessions that used them get the new ids, their tls_port goes to Nova's column when it has
 * one and to the extras either way. Expiries past 2038-01-19 are clamped to the largest value
 * Nova's 32-bit column holds. A row Nova's table cannot hold (an internal_access_path over 255
 * characters) fails the run, which then leaves everything as it was: never a silently cut path.
 * Returns null when there is no Nova table.
 */
export async function adoptCellTokens(queryRunner: QueryRunner, nowSeconds: number): Promise<TokenAdoption | null> {
  const [{ nova, tlsPort }] = (await queryRunner.query(
    `SELECT to_regclass('public.console_auth_tokens') IS NOT NULL AS nova,
            EXISTS (SELECT 1 FROM information_schema.columns
                     WHERE table_schema = 'public' AND table_name = 'console_auth_tokens' AND column_name = 'tls_port') AS "tlsPort"`,
  )) as { nova: boolean; tlsPort: boolean }[];
  if (!nova) {
    return null;
  }
  // Only the table's owner may index it: where keyhole connects as a role of its own, the index is
  // left to an operator (the purge then scans), never a reason to fail the run.
  const [{ owner }] = (await queryRunner.query(
    `SELECT pg_has_role(current_user, relowner, 'MEMBER') AS owner FROM pg_class WHERE oid = 'public.console_auth_tokens'::regclass`,
  )) as { owner: boolean }[];
  let expiresIndex: TokenAdoption['expiresIndex'] = 'not owner';
  if (owner) {
    await queryRunner.query(`CREATE INDEX IF NOT EXISTS ${NOVA_EXPIRES_INDEX} ON public.console_auth_tokens (expires)`);
    expiresIndex = 'present';
  }
  const own = `${KEYHOLE_SCHEMA}.console_auth_tokens`;
  const [expired] = (await queryRunner.query(
    `WITH gone AS (DELETE FROM ${own} WHERE expires <= $1 RETURNING 1) SELECT count(*)::int AS n FROM gone`,
    [nowSeconds],
  )) as { n: number }[];
  // One statement: insert into Nova's table, remap the sessions by hash, empty keyhole's table.
  // A hash already in Nova's table keeps Nova's row (cannot happen with random tokens; the
  // conflict clause only keeps a duplicate from failing the run).
  const [adopted] = (await queryRunner.query(
    `WITH moving AS (DELETE FROM ${own} RETURNING *),
          inserted AS (
            INSERT INTO public.console_auth_tokens
                   (created_at, updated_at, token_hash, console_type, host, port, internal_access_path,
                    instance_uuid, expires, access_url_base${tlsPort ? ', tls_port' : ''})
            SELECT created_at, updated_at, token_hash, console_type, host, port, internal_access_path,
                   instance_uuid, LEAST(expires, 2147483647), access_url_base${tlsPort ? ', tls_port' : ''}
              FROM moving ORDER BY id
            ON CONFLICT (token_hash) DO NOTHING
            RETURNING id, token_hash),
          remapped AS (
            UPDATE ${KEYHOLE_SCHEMA}.console_sessions s SET token_id = i.id
              FROM moving m JOIN inserted i ON i.token_hash = m.token_hash
             WHERE s.token_id = m.id AND s.token_source = 'database'),
          extras AS (
            INSERT INTO ${TOKEN_EXTRAS_TABLE} (token_hash, expires, tls_port)
            SELECT m.token_hash, LEAST(m.expires, 2147483647), m.tls_port
              FROM moving m JOIN inserted i ON i.token_hash = m.token_hash
             WHERE m.tls_port IS NOT NULL
            ON CONFLICT (token_hash) DO UPDATE SET tls_port = EXCLUDED.tls_port)
     SELECT count(*)::int AS n FROM inserted`,
  )) as { n: number }[];
  return { adopted: adopted.n, expired: expired.n, expiresIndex };
}
