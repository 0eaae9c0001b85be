import { randomUUID } from 'node:crypto';
import type { Pool } from 'pg';
import {
  CELL_CONNECTION_OPTIONS,
  ConsoleAuthTokenRepository,
  ConsoleSessionRepository,
  createPool,
  NewConsoleSessionRow,
} from '@keyhole/db';
import { createTestDatabase, queryDatabase } from '../support/databases';

/*
 * The proxy's statements on a real, migrated cell database: several proxies (one pool each)
 * claiming one exclusive console at once, the takeover of a crashed proxy's session, batched
 * session rows and ends, and the batched token check.
 */

const STALE_AFTER_MS = 60_000;

describe('console sessions on a real cell database', () => {
  let cell: Awaited<ReturnType<typeof createTestDatabase>>;
  /** One pool per simulated proxy replica. */
  const pools: Pool[] = [];
  let replicas: ConsoleSessionRepository[];

  beforeAll(async () => {
    cell = await createTestDatabase('cell');
    for (let index = 0; index < 4; index++) {
      pools.push(
        createPool({
          url: cell.url,
          poolSize: 5,
          connectTimeoutMs: 5_000,
          queryTimeoutMs: 5_000,
          statementTimeoutMs: 5_000,
          applicationName: `keyhole-test-${index}`,
          connectionOptions: CELL_CONNECTION_OPTIONS,
        }),
      );
    }
    replicas = pools.map((pool) => new ConsoleSessionRepository('cell1', pool));
  });

  afterAll(async () => {
    for (const pool of pools) {
      await pool.end();
    }
    await cell?.drop();
  });

  function session(overrides: Partial<NewConsoleSessionRow> = {}): NewConsoleSessionRow {
    return {
      id: randomUUID(),
      tokenId: 1,
      tokenSource: 'database',
      tokenFingerprint: '0123456789ab',
      instanceUuid: randomUUID(),
      consoleType: 'serial',
      host: '10.0.0.1',
      port: 10_000 + Math.floor(Math.random() * 50_000),
      proxyInstance: 'proxy-a',
      clientAddress: '192.0.2.1',
      route: null,
      ...overrides,
    };
  }

  const liveOn = (port: number) =>
    queryDatabase<{ id: string }>(cell.url, `SELECT id FROM console_sessions WHERE host = '10.0.0.1' AND port = $1 AND ended_at IS NULL`, [
      port,
    ]);

  it('lets exactly one of many concurrent claims on a serial port in, and tells the others who holds it', async () => {
    const port = 20_001;
    const claims = Array.from({ length: 24 }, (_, index) => session({ port, proxyInstance: `proxy-${index % replicas.length}` }));
    const holders = await Promise.all(
      claims.map((claim, index) => replicas[index % replicas.length].insertExclusive(claim, STALE_AFTER_MS)),
    );
    const winners = claims.filter((_, index) => holders[index] === null);
    expect(winners).toHaveLength(1);
    expect(new Set(holders.filter((holder) => holder !== null))).toEqual(new Set([winners[0].id]));
    expect(await liveOn(port)).toEqual([{ id: winners[0].id }]);
  });

  it('takes over a session whose proxy stopped reporting exactly once, however many proxies try at once', async () => {
    const port = 20_002;
    const stale = session({ port, proxyInstance: 'crashed-proxy' });
    await replicas[0].insertExclusive(stale, STALE_AFTER_MS);
    await queryDatabase(cell.url, `UPDATE console_sessions SET last_seen_at = now() - interval '1 hour' WHERE id = $1`, [stale.id]);
    const claims = Array.from({ length: 12 }, () => session({ port }));
    const holders = await Promise.all(
      claims.map((claim, index) => replicas[index % replicas.length].insertExclusive(claim, STALE_AFTER_MS)),
    );
    expect(holders.filter((holder) => holder === null)).toHaveLength(1);
    const [staleRow] = await queryDatabase<{ close_reason: string; ended_at: Date | null }>(
      cell.url,
      'SELECT close_reason, ended_at FROM console_sessions WHERE id = $1',
      [stale.id],
    );
    expect(staleRow.close_reason).toBe('proxy lost');
    expect(staleRow.ended_at).not.toBeNull();
    expect(await liveOn(port)).toHaveLength(1);
  });

  it('does not take over a session whose proxy reports, and frees the port once it ends', async () => {
    const port = 20_003;
    const live = session({ port });
    expect(await replicas[0].insertExclusive(live, STALE_AFTER_MS)).toBeNull();
    expect(await replicas[1].insertExclusive(session({ port }), STALE_AFTER_MS)).toBe(live.id);
    await replicas[0].endBatch([{ id: live.id, reason: 'client closed', bytesToClient: 1, bytesToUpstream: 2 }]);
    const next = session({ port });
    expect(await replicas[1].insertExclusive(next, STALE_AFTER_MS)).toBeNull();
    expect(await liveOn(port)).toEqual([{ id: next.id }]);
  });

  it('keeps non-exclusive consoles shared, and a serial port of another host free', async () => {
    const port = 20_004;
    expect(await replicas[0].insertExclusive(session({ port }), STALE_AFTER_MS)).toBeNull();
    expect(await replicas[0].insertExclusive(session({ port, host: '10.0.0.2' }), STALE_AFTER_MS)).toBeNull();
    const vnc = [session({ port, consoleType: 'novnc' }), session({ port, consoleType: 'novnc' })];
    await replicas[0].insertBatch(vnc);
    expect(await liveOn(port)).toHaveLength(3);
  });

  it("writes batched rows, some already ended, and batched ends that keep an operator's reason", async () => {
    const [live, short, kicked] = [session({ consoleType: 'novnc' }), session({ consoleType: 'novnc' }), session({ consoleType: 'novnc' })];
    await replicas[0].insertBatch([live, { ...short, end: { reason: 'console closed', bytesToClient: 12, bytesToUpstream: 0 } }, kicked]);
    await queryDatabase(cell.url, `UPDATE console_sessions SET ended_at = now(), close_reason = 'ended by operator' WHERE id = $1`, [
      kicked.id,
    ]);
    await replicas[0].endBatch([
      { id: live.id, reason: 'client closed', bytesToClient: 100, bytesToUpstream: 7 },
      { id: kicked.id, reason: 'client closed', bytesToClient: 5, bytesToUpstream: 6 },
    ]);
    const rows = await queryDatabase<{
      id: string;
      close_reason: string;
      ended_at: Date | null;
      bytes_to_client: string;
      bytes_to_upstream: string;
    }>(cell.url, 'SELECT id, close_reason, ended_at, bytes_to_client, bytes_to_upstream FROM console_sessions WHERE id = ANY($1::uuid[])', [
      [live.id, short.id, kicked.id],
    ]);
    const byId = Object.fromEntries(rows.map((row) => [row.id, row]));
    expect(byId[live.id]).toMatchObject({ close_reason: 'client closed', bytes_to_client: '100', bytes_to_upstream: '7' });
    expect(byId[short.id]).toMatchObject({ close_reason: 'console closed', bytes_to_client: '12', bytes_to_upstream: '0' });
    expect(byId[kicked.id]).toMatchObject({ close_reason: 'ended by operator', bytes_to_client: '5', bytes_to_upstream: '6' });
    for (const row of rows) {
      expect(row.ended_at).not.toBeNull();
    }
  });

  it('records the route of each session, claimed or batched, and reads it back (null without a routes file)', async () => {
    const claimed = session({ port: 20_005, route: 'tenant-7' });
    expect(await replicas[0].insertExclusive(claimed, STALE_AFTER_MS)).toBeNull();
    const [batched, unrouted] = [session({ consoleType: 'novnc', route: 'mgmt' }), session({ consoleType: 'novnc' })];
    await replicas[1].insertBatch([batched, { ...unrouted, end: { reason: 'console closed', bytesToClient: 0, bytesToUpstream: 0 } }]);
    expect((await replicas[2].findById(claimed.id))?.route).toBe('tenant-7');
    expect((await replicas[2].findById(batched.id))?.route).toBe('mgmt');
    expect((await replicas[2].findById(unrouted.id))?.route).toBeNull();
  });

  const reasonOf = async (id: string) =>
    (await queryDatabase<{ close_reason: string | null }>(cell.url, 'SELECT close_reason FROM console_sessions WHERE id = $1', [id]))[0]
      ?.close_reason;

  it("reaps the live rows not seen for the stale time ('proxy lost'), only those, in batches", async () => {
    const lost = [session({ consoleType: 'novnc' }), session({ consoleType: 'novnc' }), session()];
    const seen = session({ consoleType: 'novnc' });
    const ended = session({ consoleType: 'novnc' });
    await replicas[0].insertBatch([...lost, seen, ended]);
    await replicas[0].endBatch([{ id: ended.id, reason: 'client closed', bytesToClient: 0, bytesToUpstream: 0 }]);
    await queryDatabase(cell.url, `UPDATE console_sessions SET last_seen_at = now() - interval '1 hour' WHERE id = ANY($1::uuid[])`, [
      [...lost, ended].map((row) => row.id),
    ]);
    // Other test cases' rows are fresh: with a one-hour-minus-a-minute threshold only these qualify.
    expect(await replicas[1].endLostBatch(3_540_000, 2)).toBe(2);
    expect(await replicas[1].endLostBatch(3_540_000, 2)).toBe(1);
    expect(await replicas[1].endLostBatch(3_540_000, 2)).toBe(0);
    for (const row of lost) {
      expect(await reasonOf(row.id)).toBe('proxy lost');
    }
    expect(await reasonOf(ended.id)).toBe('client closed');
    expect(await reasonOf(seen.id)).toBeNull();
    // The proxy's own end, written late, says what really happened; an operator's is kept.
    await replicas[0].endBatch([{ id: lost[0].id, reason: 'client closed', bytesToClient: 5, bytesToUpstream: 6 }]);
    expect(await reasonOf(lost[0].id)).toBe('client closed');
  });

  it('purges the rows that ended before the cutoff, in batches of at most the batch size, and no live row', async () => {
    const old = [session({ consoleType: 'novnc' }), session({ consoleType: 'novnc' }), session()];
    const live = session({ consoleType: 'novnc' });
    await replicas[0].insertBatch([...old, live]);
    await replicas[0].endBatch(old.map((row) => ({ id: row.id, reason: 'client closed', bytesToClient: 0, bytesToUpstream: 0 })));
    await queryDatabase(cell.url, `UPDATE console_sessions SET ended_at = now() - interval '2 days' WHERE id = ANY($1::uuid[])`, [
      old.map((row) => row.id),
    ]);
    // Other test cases' rows ended just now (or are live): with a cutoff a day ago only these go.
    const cutoff = new Date(Date.now() - 24 * 3600 * 1000);
    expect(await replicas[1].deleteEndedBatch(cutoff, 2)).toBe(2);
    expect(await replicas[1].deleteEndedBatch(cutoff, 2)).toBe(1);
    expect(await replicas[1].deleteEndedBatch(cutoff, 2)).toBe(0);
    for (const row of old) {
      expect(await replicas[2].findById(row.id)).toBeNull();
    }
    expect(await replicas[2].findById(live.id)).not.toBeNull();
  });

  it('tells a heartbeat which of its sessions were ended by someone else, and leaves those ended', async () => {
    const [live, reaped, unwritten] = [session({ consoleType: 'novnc' }), session({ consoleType: 'novnc' }), session()];
    await replicas[0].insertBatch([live, reaped]);
    await queryDatabase(cell.url, `UPDATE console_sessions SET last_seen_at = now() - interval '1 hour' WHERE id = $1`, [reaped.id]);
    expect(await replicas[2].endLostBatch(3_540_000, 1_000)).toBe(1);
    const counters = (id: string) => ({ id, bytesToClient: 10, bytesToUpstream: 20 });
    expect(await replicas[0].heartbeat([live, reaped, unwritten].map((row) => counters(row.id)))).toEqual([reaped.id]);
    const [row] = await queryDatabase<{ ended_at: Date | null; bytes_to_client: string }>(
      cell.url,
      'SELECT ended_at, bytes_to_client FROM console_sessions WHERE id = $1',
      [live.id],
    );
    expect(row).toEqual({ ended_at: null, bytes_to_client: '10' });
    expect(await reasonOf(reaped.id)).toBe('proxy lost');
  });

  it("ends a proxy's own earlier live rows on its restart, never another proxy's", async () => {
    const mine = [session({ proxyInstance: 'restarting' }), session({ consoleType: 'novnc', proxyInstance: 'restarting' })];
    const theirs = session({ consoleType: 'novnc', proxyInstance: 'restarting-not' });
    await replicas[0].insertExclusive(mine[0], STALE_AFTER_MS);
    await replicas[0].insertBatch([mine[1], theirs]);
    expect(await replicas[0].endEarlierOfProxy('restarting')).toBe(2);
    expect(await reasonOf(mine[0].id)).toBe('proxy restarted');
    expect(await reasonOf(mine[1].id)).toBe('proxy restarted');
    expect(await reasonOf(theirs.id)).toBeNull();
    // Its serial port is free again.
    expect(await replicas[1].insertExclusive(session({ port: mine[0].port }), STALE_AFTER_MS)).toBeNull();
  });

  it('writes a batch of rows twice without failing (a retry after a commit whose answer was lost)', async () => {
    const rows = [session({ consoleType: 'novnc' }), session({ consoleType: 'novnc' })];
    await replicas[0].insertBatch(rows);
    await expect(replicas[0].insertBatch(rows)).resolves.toBeUndefined();
    expect(
      await queryDatabase(cell.url, 'SELECT id FROM console_sessions WHERE id = ANY($1::uuid[])', [rows.map((row) => row.id)]),
    ).toHaveLength(2);
  });

  it('checks many token hashes in one query: valid ones only, expired and unknown ones left out', async () => {
    const tokens = new ConsoleAuthTokenRepository('cell1', pools[0]);
    const hash = (n: number) => n.toString(16).padStart(64, '0');
    for (const [n, expires] of [
      [1, 2_000],
      [2, 1_000],
    ]) {
      await queryDatabase(
        cell.url,
        `INSERT INTO console_auth_tokens (token_hash, console_type, host, port, instance_uuid, expires) VALUES ($1, 'novnc', 'h', 5900, 'i', $2)`,
        [hash(n), expires],
      );
    }
    const rows = await tokens.findValidByHashes([hash(1), hash(2), hash(3)], 1_000);
    expect(rows.map((row) => row.tokenHash)).toEqual([hash(1)]);
    expect(rows[0]).toMatchObject({ consoleType: 'novnc', port: 5900, expires: 2_000 });
  });
});
