import type { Pool } from 'pg';
import { ConsoleAuthTokenEntity, consoleAuthTokenRows } from './console-auth-token.entity';
import { consoleEventPayloads } from './console-events';
import { notify } from './console-session.repository';
import { inTransaction, runCounted, runPrepared } from '../database-pool';
import { isRowDataError } from '../postgres-errors';
import { expiredBatchDeleteSql } from './purge-statements';
import { BatchOutcome, QueryBatcher } from '../query-batcher';

/** What keyhole writes of a new row; the table fills in the rest (id, timestamps, row version). */
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

const NEW_ROW_COLUMNS = consoleAuthTokenRows.columnNames(NEW_ROW_PROPERTIES);

// The casts follow NEW_ROW_PROPERTIES, in order.
const INSERT_ROWS_SQL = `INSERT INTO console_auth_tokens (${NEW_ROW_COLUMNS})
  SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::integer[], $5::integer[], $6::text[], $7::varchar[],
                       $8::bigint[], $9::varchar[], $10::varchar[], $11::varchar[])
  RETURNING ${consoleAuthTokenRows.selectList()}`;

const INSERT_IF_ABSENT_SQL = `INSERT INTO console_auth_tokens (${NEW_ROW_COLUMNS})
  VALUES (${NEW_ROW_PROPERTIES.map((_, index) => `$${index + 1}`).join(', ')})
  ON CONFLICT DO NOTHING RETURNING id`;

/**
 * What the console proxy needs of a token to open its console. Its lookup runs on every connect
 * and every refused guess: no timestamps or bookkeeping columns to parse.
 */
const grants = consoleAuthTokenRows.projection([
  'id',
  'tokenHash',
  'consoleType',
  'host',
  'port',
  'internalAccessPath',
  'instanceUuid',
  'expires',
  'accessUrlBase',
]);

export type ConsoleGrantRow = ReturnType<typeof grants.read>;

const FIND_GRANTS_SQL = `SELECT ${grants.selectList} FROM console_auth_tokens WHERE token_hash = ANY($1::varchar[]) AND expires > $2`;

const FIND_VALID_SQL = `SELECT ${consoleAuthTokenRows.selectList()} FROM console_auth_tokens WHERE token_hash = $1 AND expires > $2 LIMIT 1`;

export interface TokenListFilter {
  instanceUuid?: string;
  /** Only rows with an id greater than this (keyset pagination). */
  afterId?: number;
  limit: number;
}

/** Every side effect on one cell's `console_auth_tokens`. Built per cell by the cell registry. */
export class ConsoleAuthTokenRepository {
  private readonly inserts: QueryBatcher<NewConsoleAuthTokenRow, ConsoleAuthTokenEntity>;

  constructor(
    readonly cellName: string,
    private readonly pool: Pool,
  ) {
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
    const inserted = await this.pool.query(
      INSERT_IF_ABSENT_SQL,
      NEW_ROW_PROPERTIES.map((property) => row[property]),
    );
    return inserted.rows.length > 0;
  }

  /** The row whose hash matches and whose `expires` is strictly after `nowSeconds` (Nova's rule). */
  async findValidByHash(tokenHash: string, nowSeconds: number): Promise<ConsoleAuthTokenEntity | null> {
    // Every token check of the API runs this: a prepared statement on the unique index, without a
    // parse and plan per call.
    const rows = await runPrepared<Record<string, unknown>>(this.pool, 'keyhole_find_valid_token', FIND_VALID_SQL, [tokenHash, nowSeconds]);
    return rows.length === 0 ? null : consoleAuthTokenRows.fromRow(rows[0]);
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
    const rows = await runPrepared<Record<string, unknown>>(this.pool, 'keyhole_find_console_grants', FIND_GRANTS_SQL, [
      tokenHashes,
      nowSeconds,
    ]);
    return rows.map((row) => grants.read(row));
  }

  async findById(id: number): Promise<ConsoleAuthTokenEntity | null> {
    const { rows } = await this.pool.query<Record<string, unknown>>(
      `SELECT ${consoleAuthTokenRows.selectList()} FROM console_auth_tokens WHERE id = $1`,
      [id],
    );
    return rows.length === 0 ? null : consoleAuthTokenRows.fromRow(rows[0]);
  }

  async list(filter: TokenListFilter): Promise<ConsoleAuthTokenEntity[]> {
    const conditions: string[] = [];
    const parameters: unknown[] = [];
    if (filter.instanceUuid !== undefined) {
      conditions.push(`instance_uuid = $${parameters.push(filter.instanceUuid)}`);
    }
    if (filter.afterId !== undefined) {
      conditions.push(`id > $${parameters.push(filter.afterId)}`);
    }
    const where = conditions.length > 0 ? `WHERE ${conditions.join(' AND ')}` : '';
    const { rows } = await this.pool.query<Record<string, unknown>>(
      `SELECT ${consoleAuthTokenRows.selectList()} FROM console_auth_tokens ${where} ORDER BY id ASC LIMIT $${parameters.push(filter.limit)}`,
      parameters,
    );
    return rows.map((row) => consoleAuthTokenRows.fromRow(row));
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

  /** Distinct host:port targets of an instance's valid tokens of one console type. */
  async listValidTargets(instanceUuid: string, consoleType: string, nowSeconds: number): Promise<{ host: string; port: number }[]> {
    const { rows } = await this.pool.query<{ host: string; port: number }>(
      `SELECT DISTINCT host, port FROM console_auth_tokens
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
    const { rows } = await this.pool.query<{ id: string }>('SELECT id FROM console_auth_tokens WHERE id = ANY($1::bigint[])', [ids]);
    const present = new Set(rows.map((row) => Number(row.id)));
    return ids.filter((id) => !present.has(id));
  }

  /**
   * Deletes the tokens matching `where`, leaves a tombstone of each hash until its expiry (so the
   * legacy fallback never serves a copy of a revoked token), and tells every proxy of the cell to
   * end their sessions, all in one transaction.
   */
  private deleteAndAnnounce(where: string, parameters: unknown[], instanceUuids?: string[]): Promise<number[]> {
    return inTransaction(this.pool, async (client) => {
      const { rows } = await client.query<{ id: string }>(
        `WITH deleted AS (DELETE FROM console_auth_tokens WHERE ${where} RETURNING id, token_hash, expires),
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
    const parameters: unknown[] = [nowSeconds, batchSize];
    if (host !== undefined) {
      parameters.push(host);
    }
    return runCounted(this.pool, expiredBatchDeleteSql('console_auth_tokens', host !== undefined), parameters);
  }

  /**
   * One INSERT of every row (arrays unnested: one prepared statement whatever the batch size).
   * When it fails because of a row's data (a duplicate hash, a value the table refuses), nothing
   * was written and each row is tried again alone, so that one row's error is its own.
   */
  private async insertBatch(rows: NewConsoleAuthTokenRow[]): Promise<BatchOutcome<ConsoleAuthTokenEntity>[]> {
    let raws: Record<string, unknown>[];
    try {
      raws = await runPrepared<Record<string, unknown>>(
        this.pool,
        'keyhole_insert_tokens',
        INSERT_ROWS_SQL,
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
      return { ok: true, value: consoleAuthTokenRows.fromRow(raw) };
    });
  }
}
