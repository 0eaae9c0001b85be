import { Logger } from '@nestjs/common';
import type { NewConsoleSessionRow, SessionEnd, SessionRecord } from '@keyhole/db';
import { SessionRecorder, SessionWriteMetrics } from './session-recorder';

function sessionRow(id: string): NewConsoleSessionRow {
  return {
    id,
    tokenId: 1,
    tokenSource: 'database',
    tokenFingerprint: '0123456789ab',
    instanceUuid: 'instance',
    consoleType: 'novnc',
    host: '127.0.0.1',
    port: 5900,
    proxyInstance: 'proxy-a',
    clientAddress: '127.0.0.1',
    route: null,
  };
}

/** A store whose statements the test completes by hand, in order. */
function fakeStore() {
  const statements: { kind: 'insert' | 'end'; rows: (SessionRecord | SessionEnd)[]; done: () => void; fail: (error: unknown) => void }[] =
    [];
  const record =
    (kind: 'insert' | 'end') =>
    (rows: (SessionRecord | SessionEnd)[]): Promise<void> =>
      new Promise((resolve, reject) => statements.push({ kind, rows: rows.map((row) => ({ ...row })), done: resolve, fail: reject }));
  return { insertBatch: jest.fn(record('insert')), endBatch: jest.fn(record('end')), statements };
}

/** Metrics that remember what the recorder reported. */
function fakeMetrics() {
  const seen = { pending: 0, retriedRows: 0, dropped: {} as Record<string, number> };
  const metrics: SessionWriteMetrics = {
    setPending: (count) => (seen.pending = count),
    retried: (count) => (seen.retriedRows += count),
    dropped: (reason, count) => (seen.dropped[reason] = (seen.dropped[reason] ?? 0) + count),
  };
  return Object.assign(seen, { metrics });
}

const writeDelayMs = 5;
// Fake timers: the write delay passes when the test says so, not on the clock.
const afterDelay = (): Promise<void> => jest.advanceTimersByTimeAsync(writeDelayMs + 5);
const nextTurn = (): Promise<void> => jest.advanceTimersByTimeAsync(0);

describe('SessionRecorder', () => {
  let warnings: jest.SpyInstance;
  beforeEach(() => {
    jest.useFakeTimers();
    warnings = jest.spyOn(Logger.prototype, 'warn').mockImplementation(() => undefined);
  });
  afterEach(() => {
    warnings.mockRestore();
    jest.useRealTimers();
  });

  /** The session ids of the "could not record" warnings so far. */
  const lostSessions = (): string[] => warnings.mock.calls.map(([fields]) => (fields as { sessionId: string }).sessionId);

  it('writes the rows queued within the delay in one statement, not on the connect path, a session that ended meanwhile with its end', async () => {
    const store = fakeStore();
    const recorder = new SessionRecorder(store, { writeDelayMs });
    const written = [recorder.record(sessionRow('a')), recorder.record(sessionRow('b'))];
    await nextTurn();
    // Nothing goes to the database while the consoles are being opened.
    expect(store.statements).toHaveLength(0);
    const ended = recorder.end({ id: 'a', reason: 'client closed', bytesToClient: 12, bytesToUpstream: 3 });
    await afterDelay();
    expect(store.statements).toHaveLength(1);
    expect(store.statements[0].kind).toBe('insert');
    expect(store.statements[0].rows).toEqual([
      { ...sessionRow('a'), end: { reason: 'client closed', bytesToClient: 12, bytesToUpstream: 3 } },
      sessionRow('b'),
    ]);
    store.statements[0].done();
    await Promise.all([...written, ended]);
    expect(store.endBatch).not.toHaveBeenCalled();
  });

  it('writes the ends queued within the delay together, in one statement', async () => {
    const store = fakeStore();
    const recorder = new SessionRecorder(store, { writeDelayMs });
    const ended = [
      recorder.end({ id: 'a', reason: 'client closed', bytesToClient: 1, bytesToUpstream: 2 }),
      recorder.end({ id: 'b', reason: 'token revoked', bytesToClient: 3, bytesToUpstream: 4 }),
    ];
    await nextTurn();
    expect(store.statements).toHaveLength(0);
    await afterDelay();
    expect(store.statements).toHaveLength(1);
    expect(store.statements[0]).toMatchObject({ kind: 'end', rows: [{ id: 'a' }, { id: 'b', reason: 'token revoked' }] });
    store.statements[0].done();
    await Promise.all(ended);
  });

  it('writes an end after the write of its row, never in the same one', async () => {
    const store = fakeStore();
    const recorder = new SessionRecorder(store, { writeDelayMs });
    void recorder.record(sessionRow('a'));
    await afterDelay();
    expect(store.statements.map((statement) => statement.kind)).toEqual(['insert']);
    // The row is being written: the end waits for it.
    const ended = recorder.end({ id: 'a', reason: 'console closed', bytesToClient: 1, bytesToUpstream: 2 });
    await afterDelay();
    expect(store.statements).toHaveLength(1);
    store.statements[0].done();
    await afterDelay();
    expect(store.statements.map((statement) => statement.kind)).toEqual(['insert', 'end']);
    expect(store.statements[1].rows).toEqual([{ id: 'a', reason: 'console closed', bytesToClient: 1, bytesToUpstream: 2 }]);
    let settled = false;
    void ended.then(() => (settled = true));
    await Promise.resolve();
    expect(settled).toBe(false);
    store.statements[1].done();
    await ended;
  });

  it('writes row by row when the database refuses a value, so that one bad row does not lose the others', async () => {
    const store = fakeStore();
    const recorder = new SessionRecorder(store, { writeDelayMs });
    const written = Promise.all([recorder.record(sessionRow('a')), recorder.record({ ...sessionRow('b'), instanceUuid: 'x'.repeat(40) })]);
    await afterDelay();
    store.statements[0].fail(Object.assign(new Error('value too long'), { code: '22001' }));
    await afterDelay();
    expect(store.statements.slice(1).map((statement) => statement.rows.map((row) => row.id))).toEqual([['a']]);
    store.statements[1].done();
    await afterDelay();
    expect(store.statements.slice(2).map((statement) => statement.rows.map((row) => row.id))).toEqual([['b']]);
    store.statements[2].fail(Object.assign(new Error('value too long'), { code: '22001' }));
    await written;
    expect(store.insertBatch).toHaveBeenCalledTimes(3);
    expect(lostSessions()).toEqual(['b']);
  });

  it('writes a batch the database did not take again, with backoff, until it lands; its waiters wait for that', async () => {
    const store = fakeStore();
    const metrics = fakeMetrics();
    const recorder = new SessionRecorder(store, { writeDelayMs, metrics: metrics.metrics });
    let settled = false;
    const written = Promise.all([recorder.record(sessionRow('a')), recorder.record(sessionRow('b'))]).then(() => (settled = true));
    await afterDelay();
    store.statements[0].fail(new Error('connect ECONNREFUSED'));
    // Not row by row, not at once: after the backoff (250 ms, then 500 ms, ...).
    await jest.advanceTimersByTimeAsync(200);
    expect(store.statements).toHaveLength(1);
    await jest.advanceTimersByTimeAsync(100);
    expect(store.statements.map((statement) => statement.rows.map((row) => row.id))).toEqual([
      ['a', 'b'],
      ['a', 'b'],
    ]);
    store.statements[1].fail(new Error('Query read timeout'));
    await jest.advanceTimersByTimeAsync(400);
    expect(store.statements).toHaveLength(2);
    await jest.advanceTimersByTimeAsync(200);
    expect(store.statements).toHaveLength(3);
    expect(settled).toBe(false);
    expect(recorder.pending).toBe(2);
    store.statements[2].done();
    await written;
    expect(recorder.pending).toBe(0);
    expect(metrics.retriedRows).toBe(4);
    expect(metrics.pending).toBe(0);
    expect(lostSessions()).toEqual([]);
    // Landed: the next write goes after the usual delay again.
    void recorder.end({ id: 'a', reason: 'client closed', bytesToClient: 0, bytesToUpstream: 0 });
    await afterDelay();
    expect(store.statements).toHaveLength(4);
  });

  it('retries ends too, and an end queued while its row failed to land goes with the row, never before it', async () => {
    const store = fakeStore();
    const recorder = new SessionRecorder(store, { writeDelayMs });
    void recorder.record(sessionRow('a'));
    const earlierEnd = recorder.end({ id: 'old', reason: 'console closed', bytesToClient: 1, bytesToUpstream: 1 });
    await afterDelay();
    expect(store.statements.map((statement) => statement.kind)).toEqual(['insert', 'end']);
    // The row is being written when its session ends.
    const ended = recorder.end({ id: 'a', reason: 'client closed', bytesToClient: 7, bytesToUpstream: 8 });
    store.statements[0].fail(new Error('connect ECONNREFUSED'));
    store.statements[1].fail(new Error('connect ECONNREFUSED'));
    await jest.advanceTimersByTimeAsync(300);
    expect(store.statements.slice(2).map((statement) => [statement.kind, statement.rows])).toEqual([
      ['insert', [{ ...sessionRow('a'), end: { reason: 'client closed', bytesToClient: 7, bytesToUpstream: 8 } }]],
      ['end', [{ id: 'old', reason: 'console closed', bytesToClient: 1, bytesToUpstream: 1 }]],
    ]);
    store.statements[2].done();
    store.statements[3].done();
    await Promise.all([ended, earlierEnd]);
  });

  it('keeps at most maxPending records and ends: the oldest are kept and written, newer ones dropped, counted and logged once', async () => {
    const store = fakeStore();
    const metrics = fakeMetrics();
    const errors = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    try {
      const recorder = new SessionRecorder(store, { writeDelayMs, maxPending: 3, metrics: metrics.metrics });
      const kept = [recorder.record(sessionRow('a')), recorder.record(sessionRow('b'))];
      await afterDelay();
      store.statements[0].fail(new Error('connect ECONNREFUSED'));
      await nextTurn();
      kept.push(recorder.end({ id: 'c', reason: 'client closed', bytesToClient: 0, bytesToUpstream: 0 }));
      // Full: these resolve at once, unwritten.
      await recorder.record(sessionRow('d'));
      await recorder.end({ id: 'e', reason: 'client closed', bytesToClient: 0, bytesToUpstream: 0 });
      // The end of a session whose row is queued takes no room: it goes with the row.
      kept.push(recorder.end({ id: 'a', reason: 'client closed', bytesToClient: 5, bytesToUpstream: 6 }));
      expect(recorder.pending).toBe(3);
      expect(metrics.pending).toBe(3);
      expect(metrics.dropped).toEqual({ queue_full: 2 });
      expect(errors).toHaveBeenCalledTimes(1);
      await jest.advanceTimersByTimeAsync(300);
      const ids = store.statements.slice(1).map((statement) => statement.rows.map((row) => row.id));
      expect(ids).toEqual([['a', 'b'], ['c']]);
      expect(store.statements[1].rows[0]).toMatchObject({ id: 'a', end: { reason: 'client closed' } });
      store.statements[1].done();
      store.statements[2].done();
      await Promise.all(kept);
      await nextTurn();
      // Room again: new records are taken.
      void recorder.record(sessionRow('f'));
      expect(recorder.pending).toBe(1);
    } finally {
      errors.mockRestore();
    }
  });

  it('flush(deadline) retries until the deadline, then gives up what is left (counted) and resolves', async () => {
    const store = fakeStore();
    const metrics = fakeMetrics();
    const errors = jest.spyOn(Logger.prototype, 'error').mockImplementation(() => undefined);
    try {
      const recorder = new SessionRecorder(store, { writeDelayMs: 60_000, metrics: metrics.metrics });
      const written = recorder.record(sessionRow('a'));
      void recorder.end({ id: 'b', reason: 'proxy shutdown', bytesToClient: 0, bytesToUpstream: 0 });
      let flushed = false;
      const flush = recorder.flush(Date.now() + 1_000).then(() => (flushed = true));
      await nextTurn();
      expect(store.statements).toHaveLength(2);
      store.statements[0].fail(new Error('connect ECONNREFUSED'));
      store.statements[1].fail(new Error('connect ECONNREFUSED'));
      await jest.advanceTimersByTimeAsync(300);
      expect(store.statements).toHaveLength(4);
      expect(flushed).toBe(false);
      await jest.advanceTimersByTimeAsync(800);
      await flush;
      // The write still out when the deadline passed is given up when it fails, not tried again.
      store.statements[2].fail(new Error('connect ECONNREFUSED'));
      store.statements[3].fail(new Error('connect ECONNREFUSED'));
      await written;
      await jest.advanceTimersByTimeAsync(10_000);
      expect(store.statements).toHaveLength(4);
      expect(metrics.dropped).toEqual({ shutdown: 2 });
      expect(recorder.pending).toBe(0);
    } finally {
      errors.mockRestore();
    }
  });

  it('flush() writes what is queued without waiting for the delay', async () => {
    const store = fakeStore();
    const recorder = new SessionRecorder(store, { writeDelayMs: 60_000 });
    void recorder.record(sessionRow('a'));
    const flushed = recorder.flush();
    await Promise.resolve();
    expect(store.statements).toHaveLength(1);
    store.statements[0].done();
    await flushed;
  });
});
