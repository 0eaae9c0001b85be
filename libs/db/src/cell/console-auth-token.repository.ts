import type { Pool } from 'pg';
import { ConsoleAuthTokenEntity, consoleAuthTokenRows } from './console-auth-token.entity';
import { TOKEN_EXTRAS_TABLE } from './cell-schema';
import { CellTokenTable, TokenTableShape } from './cell-token-table';
import { RowMapper } from '../row-mapper';
import { consoleEventPayloads } from './console-events';
import { notify } from './console-session.repository';
import { inTransaction, runCounted, runPrepared } from '../database-pool';
import { isRowDataError } from '../postgres-errors';
import { expiredBatchDeleteSql } from './purge-statements';
import { BatchOutcome, QueryBatcher } from '../query-batcher';

/** What keyhole writes of a new token: the token table's columns, and its extras. */
const NEW_ROW_PROPERTIES = [
  'tokenHash',
  'consoleType',
  'host',
  'port',
  'tlsPort',
  'internalAccessPath',
  'instanceUuid',
  'expires',
  'accessUrlBase',
  'objectVersion',
  'issuedBy',
] as const satisfies readonly (keyof ConsoleAuthTokenEntity)[];

export type NewConsoleAuthTokenRow = Pick<ConsoleAuthTokenEntity, (typeof NEW_ROW_PROPERTIES)[number]>;

/**
 * What the console proxy needs of a token to open its console. Its lookup runs on every connect
 * and every refused guess: no timestamps, no extras, no join.
 */
const GRANT_PROPERTIES = [
  'id',
  'tokenHash',
  'consoleType',
  'host',
  'port',
  'internalAccessPath',
  'instanceUuid',
  'expires',
  'accessUrlBase',
] as const satisfies readonly (keyof ConsoleAuthTokenEntity)[];

const grants = consoleAuthTokenRows(false).projection(GRANT_PROPERTIES);

export type ConsoleGrantRow = ReturnType<typeof grants.read>;

/**
 * keyhole's statements on one token table shape (see CellTokenTable): the table is named with its
 * schema, and each prepared statement's name carries the shape's key, so that a connection that
 * prepared it for keyhole's own table never runs it against Nova's.
 */
class TokenStatements {
  readonly rows: RowMapper<ConsoleAuthTokenEntity>;
  /** The token table as `t`, LEFT JOINed with keyhole's extras as `x` (Nova's rows have none). */
  readonly from: string;
  readonly insertRows: string;
  readonly insertIfAbsent: string;
  readonly findGrants: string;
  readonly findValid: string;

  constructor(readonly shape: TokenTableShape) {
    this.rows = consoleAuthTokenRows(shape.hasTlsPort);
    this.from = `${shape.table} t LEFT JOIN ${TOKEN_EXTRAS_TABLE} x ON x.token_hash = t.token_hash`;
    this.insertRows = this.insert(false);
    this.insertIfAbsent = this.insert(true);
    this.findGrants = `SELECT ${grants.selectList} FROM ${shape.table} t WHERE t.token_hash = ANY($1::varchar[]) AND t.expires > $2`;
    this.findValid = `SELECT ${this.rows.selectList()} FROM ${this.from} WHERE t.token_hash = $1 AND t.expires > $2 LIMIT 1`;
  }

  /** `keyhole_find_valid_token` -> `keyhole_find_valid_token_nova_tls`. */
  name(statement: string): string {
    return `${statement}_${this.shape.key}`;
  }

  /**
   * One statement inserts the rows (arrays unnested, in NEW_ROW_PROPERTIES order: one prepared
   * statement whatever the batch size) into the token table and their extras into keyhole's
   * table, and returns them as stored. `created_at` is written explicitly, as Nova's code does
   * (Nova's column has no default). tls_port goes to the token table when it has the column (so
   * that Nova's own code sees it) and to the extras in any case. An extras row of the same hash
   * (left by a token that Nova deleted) is replaced.
   */
  private insert(ifAbsent: boolean): string {
    const tls = this.shape.hasTlsPort ? ', tls_port' : '';
    return `WITH input AS (
        SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::integer[], $5::integer[], $6::text[], $7::varchar[],
                             $8::bigint[], $9::varchar[], $10::varchar[], $11::varchar[])
          AS i(token_hash, console_type, host, port, tls_port, internal_access_path, instance_uuid, expires, access_url_base,
               object_version, issued_by)),
      t AS (
        INSERT INTO ${this.shape.table}
               (created_at, token_hash, console_type, host, port${tls}, internal_access_path, instance_uuid, expires, access_url_base)
        SELECT timezone('utc', now()), token_hash, console_type, host, port${tls}, internal_access_path, instance_uuid, expires,
               access_url_base FROM input
        ${ifAbsent ? 'ON CONFLICT DO NOTHING' : ''}
        RETURNING *),
      x AS (
        INSERT INTO ${TOKEN_EXTRAS_TABLE} (token_hash, expires, tls_port, object_version, issued_by)
        SELECT i.token_hash, i.expires, i.tls_port, i.object_version, i.issued_by FROM input i JOIN t ON t.token_hash = i.token_hash
        ON CONFLICT (token_hash) DO UPDATE
           SET expires = EXCLUDED.expires, tls_port = EXCLUDED.tls_port, object_version = EXCLUDED.object_version,
               issued_by = EXCLUDED.issued_by
        RETURNING *)
      SELECT ${this.rows.selectList()} FROM t LEFT JOIN x ON x.token_hash = t.token_hash`;
  }
}

export interface TokenListFilter {
  instanceUuid?: string;
  /** Only rows with an id greater than this (keyset pagination). */
  afterId?: number;
  limit: number;
}

/**
 * Every side effect on one cell's tokens: its token table (Nova's `console_auth_tokens`, or
 * keyhole's own; see CellTokenTable) and keyhole's extras of them. Built per cell by the cell
 * registry.
 */
export class ConsoleAuthTokenRepository {
  /** Which table holds this cell's tokens; resolved on first use. */
  readonly table: CellTokenTable;
  private readonly inserts: QueryBatcher<NewConsoleAuthTokenRow, ConsoleAuthTokenEntity>;
  private readonly statements = new Map<string, TokenStatements>();

  constructor(
    readonly cellName: string,
    private readonly pool: Pool,
  ) {
    this.table = new CellTokenTable(cellName, pool);
    this.inserts = new QueryBatcher((rows) => this.insertBatch(rows), { maxInFlight: 2, maxBatchSize: 256 });
  }

  /**
   * Inserts one row and returns it as stored, committed. A duplicate hash surfaces as a unique
   * violation. Concurrent inserts go out as one multi-row statement (one commit for all of them);
   * each caller gets its own row, matched by its hash, or its own row's error.
   */
  insert(row: NewConsoleAuthTokenRow): Promise<ConsoleAuthTokenEntity> {
    return this.inserts.call(row);
  }

  /** Inserts a row unless its hash is already stored; returns whether it was inserted (imports). */
  async insertIfAbsent(row: NewConsoleAuthTokenRow): Promise<boolean> {
    const statements = await this.forWriting();
    const inserted = await this.pool.query(
      statements.insertIfAbsent,
      NEW_ROW_PROPERTIES.map((property) => [row[property]]),
    );
    return inserted.rows.length > 0;
  }

  /** The row whose hash matches and whose `expires` is strictly after `nowSeconds` (Nova's rule). */
  async findValidByHash(tokenHash: string, nowSeconds: number): Promise<ConsoleAuthTokenEntity | null> {
    // Every token check of the API runs this: a prepared statement on the unique index, without a
    // parse and plan per call.
    const find = async (statements: TokenStatements): Promise<ConsoleAuthTokenEntity | null> => {
      const rows = await runPrepared<Record<string, unknown>>(
        this.pool,
        statements.name('keyhole_find_valid_token'),
        statements.findValid,
        [tokenHash, nowSeconds],
      );
      return rows.length === 0 ? null : statements.rows.fromRow(rows[0]);
    };
    const statements = await this.current();
    const found = await find(statements);
    if (found !== null) {
      return found;
    }
    const changed = await this.recheck(statements);
    return changed ? find(changed) : null;
  }

  /**
   * The grants of the valid rows (`expires > nowSeconds`) among these hashes, in one query on the
   * unique index: the proxy checks the tokens of concurrent connects together. Unknown hashes have
   * no row.
   */
  async findValidByHashes(tokenHashes: string[], nowSeconds: number): Promise<ConsoleGrantRow[]> {
    if (tokenHashes.length === 0) {
      return [];
    }
    const find = async (statements: TokenStatements): Promise<ConsoleGrantRow[]> => {
      const rows = await runPrepared<Record<string, unknown>>(
        this.pool,
        statements.name('keyhole_find_console_grants'),
        statements.findGrants,
        [tokenHashes, nowSeconds],
      );
      return rows.map((row) => grants.read(row));
    };
    const statements = await this.current();
    const found = await find(statements);
    if (found.length === tokenHashes.length) {
      return found;
    }
    // A miss may be a token of a table that appeared since (Nova's, created by nova-manage after
    // keyhole started): look again there, at most once a second.
    const changed = await this.recheck(statements);
    return changed ? find(changed) : found;
  }

  async findById(id: number): Promise<ConsoleAuthTokenEntity | null> {
    const statements = await this.current();
    const { rows } = await this.pool.query<Record<string, unknown>>(
      `SELECT ${statements.rows.selectList()} FROM ${statements.from} WHERE t.id = $1`,
      [id],
    );
    return rows.length === 0 ? null : statements.rows.fromRow(rows[0]);
  }

  async list(filter: TokenListFilter): Promise<ConsoleAuthTokenEntity[]> {
    const statements = await this.current();
    const conditions: string[] = [];
    const parameters: unknown[] = [];
    if (filter.instanceUuid !== undefined) {
      conditions.push(`t.instance_uuid = $${parameters.push(filter.instanceUuid)}`);
    }
    if (filter.afterId !== undefined) {
      conditions.push(`t.id > $${parameters.push(filter.afterId)}`);
    }
    const where = conditions.length > 0 ? `WHERE ${conditions.join(' AND ')}` : '';
    const { rows } = await this.pool.query<Record<string, unknown>>(
      `SELECT ${statements.rows.selectList()} FROM ${statements.from} ${where} ORDER BY t.id ASC LIMIT $${parameters.push(filter.limit)}`,
      parameters,
    );
    return rows.map((row) => statements.rows.fromRow(row));
  }

  /**
   * Deletes one token whatever its expiry and, in the same transaction, tells every proxy of the
   * cell to end the sessions that use it. Returns whether it existed.
   */
  async deleteById(id: number): Promise<boolean> {
    return (await this.deleteAndAnnounce('id = $1', [id])).length > 0;
  }

  /**
   * Deletes every token of an instance (any expiry) and announces it, also when none was stored:
   * the proxies then end the instance's sessions that came from the legacy store. Returns the ids.
   */
  deleteAllByInstance(instanceUuid: string): Promise<number[]> {
    return this.deleteAndAnnounce('instance_uuid = $1', [instanceUuid], [instanceUuid]);
  }

  /** Whether this hash belongs to a token revoked in keyhole that has not expired yet. */
  async isRevokedHash(tokenHash: string, nowSeconds: number): Promise<boolean> {
    const { rows } = await this.pool.query('SELECT 1 FROM revoked_token_hashes WHERE token_hash = $1 AND expires > $2', [
      tokenHash,
      nowSeconds,
    ]);
    return rows.length > 0;
  }

  /** Deletes at most `batchSize` tombstones of tokens that have expired anyway; returns how many. */
  async deleteExpiredTombstonesBatch(nowSeconds: number, batchSize: number): Promise<number> {
    return runCounted(this.pool, expiredBatchDeleteSql('revoked_token_hashes'), [nowSeconds, batchSize]);
  }

  /**
   * Deletes at most `batchSize` extras of tokens that have expired (their token is purged, or was
   * deleted by Nova's own cleanups, which know nothing of the extras); returns how many.
   */
  async deleteExpiredExtrasBatch(nowSeconds: number, batchSize: number): Promise<number> {
    return runCounted(this.pool, expiredBatchDeleteSql(TOKEN_EXTRAS_TABLE), [nowSeconds, batchSize]);
  }

  /** Distinct host:port targets of an instance's valid tokens of one console type. */
  async listValidTargets(instanceUuid: string, consoleType: string, nowSeconds: number): Promise<{ host: string; port: number }[]> {
    const { table } = await this.table.shape();
    const { rows } = await this.pool.query<{ host: string; port: number }>(
      `SELECT DISTINCT host, port FROM ${table}
        WHERE instance_uuid = $1 AND console_type = $2 AND expires > $3 ORDER BY host, port`,
      [instanceUuid, consoleType, nowSeconds],
    );
    return rows;
  }

  /** Of these token ids, the ones that no longer have a row (revoked while a proxy was not listening). */
  async findMissing(ids: number[]): Promise<number[]> {
    if (ids.length === 0) {
      return [];
    }
    const { table } = await this.table.shape();
    const { rows } = await this.pool.query<{ id: string }>(`SELECT id FROM ${table} WHERE id = ANY($1::bigint[])`, [ids]);
    const present = new Set(rows.map((row) => Number(row.id)));
    return ids.filter((id) => !present.has(id));
  }

  /**
   * Deletes the tokens matching `where` and their extras, leaves a tombstone of each hash until its
   * expiry (so the legacy fallback never serves a copy of a revoked token), and tells every proxy
   * of the cell to end their sessions, all in one transaction.
   */
  private async deleteAndAnnounce(where: string, parameters: unknown[], instanceUuids?: string[]): Promise<number[]> {
    const { table } = await this.table.shape();
    return inTransaction(this.pool, async (client) => {
      const { rows } = await client.query<{ id: string }>(
        `WITH deleted AS (DELETE FROM ${table} WHERE ${where} RETURNING id, token_hash, expires),
              extras AS (DELETE FROM ${TOKEN_EXTRAS_TABLE} x USING deleted d WHERE x.token_hash = d.token_hash),
              tombstones AS (
                INSERT INTO revoked_token_hashes (token_hash, expires)
                SELECT token_hash, expires FROM deleted WHERE token_hash ~ '^[0-9a-f]{64}$'
                ON CONFLICT (token_hash) DO NOTHING)
         SELECT id FROM deleted`,
        parameters,
      );
      const ids = rows.map((row) => Number(row.id));
      // Delivered at commit, so a proxy never ends a session for a revocation that rolled back.
      if (ids.length > 0 || instanceUuids?.length) {
        await notify(client, consoleEventPayloads({ kind: 'revoke', tokenIds: ids, ...(instanceUuids ? { instanceUuids } : {}) }));
      }
      return ids;
    });
  }

  /**
   * Deletes at most `batchSize` expired rows (`expires <= nowSeconds`), optionally of one host,
   * and returns how many. Rows locked by a concurrent purge are skipped, not waited for, and the
   * batch is picked through the `expires` (or `host, expires`) index.
   */
  async deleteExpiredBatch(nowSeconds: number, batchSize: number, host?: string): Promise<number> {
    const { table } = await this.table.shape();
    const parameters: unknown[] = [nowSeconds, batchSize];
    if (host !== undefined) {
      parameters.push(host);
    }
    return runCounted(this.pool, expiredBatchDeleteSql(table, host !== undefined), parameters);
  }

  /** The statements of the current token table. */
  private async current(): Promise<TokenStatements> {
    return this.statementsFor(await this.table.shape());
  }

  /**
   * The statements for writing a new token. While the token table is keyhole's own, it is
   * resolved again first (one catalog query per batch): a token written into keyhole's table after
   * Nova's appeared would be stranded there until the next `keyhole migrate`, while every proxy
   * already looks in Nova's. Once it is Nova's it stays Nova's.
   */
  private async forWriting(): Promise<TokenStatements> {
    const shape = await this.table.shape();
    return this.statementsFor(shape.nova ? shape : await this.table.resolve());
  }

  /** After a miss: the statements of the token table if it changed since `statements`, else null. */
  private async recheck(statements: TokenStatements): Promise<TokenStatements | null> {
    const changed = await this.table.recheckAfterMiss(statements.shape);
    return changed ? this.statementsFor(changed) : null;
  }

  private statementsFor(shape: TokenTableShape): TokenStatements {
    let statements = this.statements.get(shape.key);
    if (!statements) {
      statements = new TokenStatements(shape);
      this.statements.set(shape.key, statements);
    }
    return statements;
  }

  /**
   * One INSERT of every row (arrays unnested: one prepared statement whatever the batch size).
   * When it fails because of a row's data (a duplicate hash, a value the table refuses), nothing
   * was written and each row is tried again alone, so that one row's error is its own.
   */
  private async insertBatch(rows: NewConsoleAuthTokenRow[]): Promise<BatchOutcome<ConsoleAuthTokenEntity>[]> {
    const statements = await this.forWriting();
    let raws: Record<string, unknown>[];
    try {
      raws = await runPrepared<Record<string, unknown>>(
        this.pool,
        statements.name('keyhole_insert_tokens'),
        statements.insertRows,
        NEW_ROW_PROPERTIES.map((property) => rows.map((row) => row[property])),
      );
    } catch (error) {
      if (rows.length === 1 || !isRowDataError(error)) {
        throw error;
      }
      const outcomes: BatchOutcome<ConsoleAuthTokenEntity>[] = [];
      for (const row of rows) {
        try {
          outcomes.push(...(await this.insertBatch([row])));
        } catch (rowError) {
          outcomes.push({ ok: false, error: rowError });
        }
      }
      return outcomes;
    }
    const byHash = new Map(raws.map((raw) => [raw.tokenHash as string, raw]));
    return rows.map((row) => {
      const raw = byHash.get(row.tokenHash);
      // Cannot happen (the statement inserts every row or fails); refuse rather than guess.
      if (raw === undefined) {
        return { ok: false, error: new Error('an inserted token row was not returned') };
      }
      return { ok: true, value: statements.rows.fromRow(raw) };
    });
  }
}
