/**
 * The statement of one purge batch of `table`: picks at most $2 rows with `expires <= $1` (and
 * `host = $3` when host-scoped) in expiry order, through the table's `expires` (or `host, expires`)
 * index, skipping rows a concurrent purge holds, and deletes them by the physical row addresses
 * (ctids) the pick returned: a TID scan. Deleting `WHERE id IN (...)` made the planner hash the
 * ids and probe the primary key once per row, ~1.7x slower on a million expired rows. The ctids
 * are stable for the statement: the rows are locked by it.
 *
 * `table` is a token table (`public.` or `keyhole.console_auth_tokens`), `revoked_token_hashes` or
 * `keyhole.console_auth_token_extras`: each has an `expires` index (Nova's table keyhole's
 * `keyhole_console_auth_tokens_expires_idx`, once a migration run has seen it).
 *
 * This module imports nothing, so that the benchmark can EXPLAIN ANALYZE the very statement.
 */
export function expiredBatchDeleteSql(table: string, hostScoped = false): string {
  return `DELETE FROM ${table} WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM ${table}
     WHERE expires <= $1 ${hostScoped ? 'AND host = $3' : ''}
     ORDER BY expires
     LIMIT $2
     FOR UPDATE SKIP LOCKED))`;
}
