import { Logger } from '@nestjs/common';
import type { NewConsoleSessionRow, SessionEnd, SessionRecord } from '@keyhole/db';
import { SessionRecorder } from './session-recorder';

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
    const recorder = new SessionRecorder(store, writeDelayMs);
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
    const recorder = new SessionRecorder(store, writeDelayMs);
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
    const recorder = new SessionRecorder(store, writeDelayMs);
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
    const recorder = new SessionRecorder(store, writeDelayMs);
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

  it('gives up a batch at once when the database cannot be reached (no retry per row), and resolves its waiters', async () => {
    const store = fakeStore();
    const recorder = new SessionRecorder(store, writeDelayMs);
    const written = Promise.all([recorder.record(sessionRow('a')), recorder.record(sessionRow('b'))]);
    await afterDelay();
    store.statements[0].fail(new Error('connect ECONNREFUSED'));
    await written;
    expect(store.insertBatch).toHaveBeenCalledTimes(1);
    expect(lostSessions()).toEqual(['a', 'b']);
  });

  it('flush() writes what is queued without waiting for the delay', async () => {
    const store = fakeStore();
    const recorder = new SessionRecorder(store, 60_000);
    void recorder.record(sessionRow('a'));
    const flushed = recorder.flush();
    await Promise.resolve();
    expect(store.statements).toHaveLength(1);
    store.statements[0].done();
    await flushed;
  });
});
