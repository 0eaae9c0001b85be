import { deadlineStage, isConnectionBroken, isDatabaseUnavailable, isRowDataError } from './postgres-errors';

/** An error as pg reports a server's answer: a message and a SQLSTATE `code`. */
function serverError(code: string): Error {
  return Object.assign(new Error('server said no'), { code });
}

describe('deadlineStage', () => {
  it("tells pg's and pg-pool's deadline errors apart by stage", () => {
    expect(deadlineStage(new Error('Query read timeout'))).toBe('query');
    expect(deadlineStage(new Error('timeout exceeded when trying to connect'))).toBe('connect');
    expect(deadlineStage(new Error('Connection terminated due to connection timeout'))).toBe('connect');
    expect(deadlineStage(new Error('timeout expired'))).toBe('connect');
  });

  it('is undefined for anything else', () => {
    expect(deadlineStage(new Error('Connection terminated unexpectedly'))).toBeUndefined();
    expect(deadlineStage(serverError('57014'))).toBeUndefined();
    expect(deadlineStage('Query read timeout')).toBeUndefined();
    expect(deadlineStage(undefined)).toBeUndefined();
  });
});

describe('isDatabaseUnavailable', () => {
  it('is true for missed deadlines, lost connections and a server that cannot answer', () => {
    for (const error of [
      new Error('Query read timeout'),
      new Error('timeout exceeded when trying to connect'),
      new Error('Connection terminated unexpectedly'),
      new Error('Client has encountered a connection error and is not queryable'),
      Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }),
      serverError('08006'),
      serverError('57014'),
      serverError('57P01'),
      serverError('57P03'),
      serverError('53300'),
    ]) {
      expect(isDatabaseUnavailable(error)).toBe(true);
    }
  });

  it('tells a broken connection (destroy it) from a server that answered it could not serve (keep it)', () => {
    expect(isConnectionBroken(new Error('Query read timeout'))).toBe(true);
    expect(isConnectionBroken(serverError('57P01'))).toBe(true);
    expect(isConnectionBroken(new Error('Connection terminated unexpectedly'))).toBe(true);
    expect(isConnectionBroken(serverError('57014'))).toBe(false);
    expect(isConnectionBroken(serverError('23505'))).toBe(false);
  });

  it("looks through TypeORM's driverError and a cause chain", () => {
    expect(isDatabaseUnavailable({ message: 'query failed', driverError: new Error('Query read timeout') })).toBe(true);
    expect(isDatabaseUnavailable(new Error('cell database unreachable', { cause: serverError('57P01') }))).toBe(true);
  });

  it('is false for what the request got wrong, and for bugs', () => {
    expect(isDatabaseUnavailable(serverError('23505'))).toBe(false);
    expect(isRowDataError(serverError('23505'))).toBe(true);
    expect(isDatabaseUnavailable(serverError('42P01'))).toBe(false);
    expect(isDatabaseUnavailable(new TypeError('x is undefined'))).toBe(false);
    expect(isDatabaseUnavailable(null)).toBe(false);
    // A cycle ends the walk.
    const looped: { cause?: unknown } = {};
    looped.cause = looped;
    expect(isDatabaseUnavailable(looped)).toBe(false);
  });
});
