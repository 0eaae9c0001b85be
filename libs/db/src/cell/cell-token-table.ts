import { Logger } from '@nestjs/common';
import type { Pool } from 'pg';
import { CELL_MIGRATIONS } from '@keyhole/migrations';
import { KEYHOLE_SCHEMA, TOKEN_TABLE_REQUIRED_COLUMNS } from './cell-schema';

/** Which table holds a cell's tokens, and whether it has a `tls_port` column. */
export interface TokenTableShape {
  /** Schema-qualified: `public.console_auth_tokens` (Nova's) or `keyhole.console_auth_tokens`. */
  readonly table: string;
  /** Whether it is Nova's table. */
  readonly nova: boolean;
  /** Whether it has a `tls_port` column (keyhole's own table, Nova >= 31's). */
  readonly hasTlsPort: boolean;
  /** Short and unique per shape: part of the names of the prepared statements built for it. */
  readonly key: string;
}

/** What a cell database's schema lacks for keyhole, if anything. */
export interface CellSchemaStatus {
  /** Empty when the schema is complete. */
  readonly problems: string[];
  /** The token table, when there is one. */
  readonly tokenTable: TokenTableShape | null;
  /** Valid tokens left in keyhole's own table while Nova's is the token table: not served until adopted. */
  readonly strandedTokens: number;
}

/** The command that brings every registered cell database to the latest schema. */
export const CELL_MIGRATE_COMMAND = 'keyhole migrate';

const NOVA_TABLE = 'public.console_auth_tokens';
const OWN_TABLE = `${KEYHOLE_SCHEMA}.console_auth_tokens`;

// Nova's table first: the moment `nova-manage db sync` creates it, it is the cell's token table.
const RESOLVE_SQL = `
  SELECT n.nspname AS schema,
         EXISTS (SELECT 1 FROM pg_attribute a
                  WHERE a.attrelid = c.oid AND a.attname = 'tls_port' AND a.attnum > 0 AND NOT a.attisdropped) AS "hasTlsPort"
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relname = 'console_auth_tokens' AND c.relkind IN ('r', 'p') AND n.nspname IN ('public', '${KEYHOLE_SCHEMA}')
   ORDER BY n.nspname = 'public' DESC
   LIMIT 1`;

/** A lookup that missed re-resolves the table at most this often (the proxy misses on every bad guess). */
const RECHECK_AFTER_MISS_MS = 1_000;
/** A shape older than this is re-resolved in the background (Nova may add `tls_port` at any time). */
const SHAPE_MAX_AGE_MS = 10_000;

/**
 * Finds a cell's token table (see cell-schema.ts): Nova's `public.console_auth_tokens` when it
 * exists, else keyhole's own. Its statements name the table's schema rather than relying on the
 * search_path, because keyhole's hot statements are named prepared statements: PostgreSQL resolves
 * their names once per connection, and a table created later in an earlier schema of the
 * search_path would never be seen by them. Instead the shape is part of each statement's name, and
 * it is re-resolved after a lookup misses (at most once a second) and in the background when it is
 * old: a token that Nova writes into a table created after keyhole started is found by its first
 * lookup.
 */
export class CellTokenTable {
  private readonly logger = new Logger(CellTokenTable.name);
  private resolved: Promise<TokenTableShape> | undefined;
  private resolvedAtMs = 0;
  private refreshing = false;

  constructor(
    private readonly cellName: string,
    private readonly pool: Pool,
    private readonly nowMs: () => number = Date.now,
  ) {}

  /** The current shape; the first call resolves it (and fails if the cell has no token table). */
  shape(): Promise<TokenTableShape> {
    if (this.resolved === undefined) {
      return this.resolve();
    }
    if (!this.refreshing && this.nowMs() - this.resolvedAtMs > SHAPE_MAX_AGE_MS) {
      this.refreshing = true;
      void this.resolve()
        .catch(() => undefined)
        .finally(() => (this.refreshing = false));
    }
    return this.resolved;
  }

  /**
   * After a lookup found nothing: re-resolves the table unless it was resolved within the last
   * second, and answers whether the shape changed (then the lookup is worth repeating).
   */
  async recheckAfterMiss(previous: TokenTableShape): Promise<TokenTableShape | null> {
    if (this.nowMs() - this.resolvedAtMs < RECHECK_AFTER_MISS_MS) {
      return null;
    }
    const current = await this.resolve();
    return current.key === previous.key ? null : current;
  }

  /** Resolves the shape now. */
  resolve(): Promise<TokenTableShape> {
    const previous = this.resolved;
    const next = resolveTokenTable(this.pool).then((shape) => {
      if (shape === null) {
        throw new Error(`cell ${this.cellName} has no console_auth_tokens table: run \`${CELL_MIGRATE_COMMAND}\``);
      }
      return shape;
    });
    this.resolvedAtMs = this.nowMs();
    this.resolved = next;
    // A failed resolve is forgotten, so that the next call tries again.
    next.then(
      (shape) => {
        void previous?.then(
          (old) => old.key !== shape.key && this.logger.log({ cell: this.cellName, tokenTable: shape.table }, 'token table changed'),
          () => undefined,
        );
      },
      () => {
        if (this.resolved === next) {
          this.resolved = undefined;
        }
      },
    );
    return next;
  }
}

/** The token table of the database behind `pool`, or null when it has none. */
export async function resolveTokenTable(pool: Pool): Promise<TokenTableShape | null> {
  const { rows } = await pool.query<{ schema: string; hasTlsPort: boolean }>(RESOLVE_SQL);
  if (rows.length === 0) {
    return null;
  }
  const nova = rows[0].schema === 'public';
  const { hasTlsPort } = rows[0];
  return { table: nova ? NOVA_TABLE : OWN_TABLE, nova, hasTlsPort, key: `${nova ? 'nova' : 'own'}${hasTlsPort ? '_tls' : ''}` };
}

/**
 * Checks that a cell database has everything keyhole needs: every cell migration applied (in the
 * `keyhole` schema) and a token table with the columns keyhole reads. Also counts the valid rows
 * stranded in keyhole's own token table since Nova's appeared (adopted by the next migration run).
 */
export async function checkCellSchema(pool: Pool, nowSeconds: number): Promise<CellSchemaStatus> {
  const problems: string[] = [];
  const {
    rows: [{ hasMigrations }],
  } = await pool.query<{ hasMigrations: boolean }>(
    `SELECT to_regclass('${KEYHOLE_SCHEMA}.keyhole_migrations') IS NOT NULL AS "hasMigrations"`,
  );
  if (!hasMigrations) {
    problems.push(`no keyhole schema (${KEYHOLE_SCHEMA}.keyhole_migrations is missing)`);
  } else {
    const { rows } = await pool.query<{ name: string }>(`SELECT name FROM ${KEYHOLE_SCHEMA}.keyhole_migrations`);
    const applied = new Set(rows.map((row) => row.name));
    const missing = CELL_MIGRATIONS.map((migration) => migration.name).filter((name) => !applied.has(name));
    if (missing.length > 0) {
      problems.push(`migrations not applied: ${missing.join(', ')}`);
    }
  }
  const tokenTable = await resolveTokenTable(pool);
  if (tokenTable === null) {
    problems.push('no console_auth_tokens table');
  } else {
    const [schema, table] = tokenTable.table.split('.');
    const { rows } = await pool.query<{ column_name: string }>(
      'SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2',
      [schema, table],
    );
    const present = new Set(rows.map((row) => row.column_name));
    const missing = TOKEN_TABLE_REQUIRED_COLUMNS.filter((column) => !present.has(column));
    if (missing.length > 0) {
      problems.push(`${tokenTable.table} lacks columns ${missing.join(', ')}`);
    }
  }
  let strandedTokens = 0;
  if (tokenTable?.nova) {
    const {
      rows: [{ own }],
    } = await pool.query<{ own: boolean }>(`SELECT to_regclass('${OWN_TABLE}') IS NOT NULL AS own`);
    if (own) {
      const {
        rows: [{ stranded }],
      } = await pool.query<{ stranded: number }>(`SELECT count(*)::int AS stranded FROM ${OWN_TABLE} WHERE expires > $1`, [nowSeconds]);
      strandedTokens = stranded;
    }
  }
  return { problems, tokenTable, strandedTokens };
}
