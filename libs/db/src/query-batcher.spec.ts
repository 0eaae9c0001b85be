import { BatchOutcome, QueryBatcher } from './query-batcher';

/** A `run` whose batches the test finishes by hand. */
function controlledRun<Input>() {
  const batches: { inputs: Input[]; finish: (outcomes: BatchOutcome<string>[]) => void; fail: (error: unknown) => void }[] = [];
  const run = (inputs: Input[]) =>
    new Promise<BatchOutcome<string>[]>((resolve, reject) => batches.push({ inputs, finish: resolve, fail: reject }));
  return { run, batches };
}

// Two event-loop turns: one for finished batches to settle, one for the flush they schedule.
const turn = async () => {
  for (let i = 0; i < 2; i++) {
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
};

const settle = <T>(promise: Promise<T>) =>
  promise.then(
    (value) => ({ value }),
    (error: unknown) => ({ error }),
  );

describe('QueryBatcher', () => {
  it('sends calls made in the same turn as one batch and answers each its own outcome', async () => {
    const { run, batches } = controlledRun<number>();
    const batcher = new QueryBatcher(run, { maxInFlight: 1, maxBatchSize: 10 });
    const results = [1, 2, 3].map((input) => settle(batcher.call(input)));
    await turn();
    expect(batches.map((batch) => batch.inputs)).toEqual([[1, 2, 3]]);
    const ownError = new Error('row 2 refused');
    batches[0].finish([
      { ok: true, value: 'one' },
      { ok: false, error: ownError },
      { ok: true, value: 'three' },
    ]);
    expect(await Promise.all(results)).toEqual([{ value: 'one' }, { error: ownError }, { value: 'three' }]);
  });

  it('holds calls made while the batches in flight are at the limit, then sends them together', async () => {
    const { run, batches } = controlledRun<number>();
    const batcher = new QueryBatcher(run, { maxInFlight: 1, maxBatchSize: 10 });
    const first = batcher.call(1);
    await turn();
    const later = [batcher.call(2), batcher.call(3)];
    await turn();
    expect(batches).toHaveLength(1);
    batches[0].finish([{ ok: true, value: 'a' }]);
    await expect(first).resolves.toBe('a');
    await turn();
    expect(batches.map((batch) => batch.inputs)).toEqual([[1], [2, 3]]);
    batches[1].finish([
      { ok: true, value: 'b' },
      { ok: true, value: 'c' },
    ]);
    await expect(Promise.all(later)).resolves.toEqual(['b', 'c']);
  });

  it('splits a long queue into batches of at most maxBatchSize, up to maxInFlight at once', async () => {
    const { run, batches } = controlledRun<number>();
    const batcher = new QueryBatcher(run, { maxInFlight: 2, maxBatchSize: 2 });
    const results = [1, 2, 3, 4, 5].map((input) => batcher.call(input));
    await turn();
    expect(batches.map((batch) => batch.inputs)).toEqual([
      [1, 2],
      [3, 4],
    ]);
    for (const batch of batches.splice(0)) {
      batch.finish(batch.inputs.map((input) => ({ ok: true, value: `v${input}` })));
    }
    await turn();
    expect(batches.map((batch) => batch.inputs)).toEqual([[5]]);
    batches[0].finish([{ ok: true, value: 'v5' }]);
    await expect(Promise.all(results)).resolves.toEqual(['v1', 'v2', 'v3', 'v4', 'v5']);
  });

  it('fails every call of a batch whose run throws, and keeps serving later calls', async () => {
    const { run, batches } = controlledRun<number>();
    const batcher = new QueryBatcher(run, { maxInFlight: 1, maxBatchSize: 10 });
    const failed = [settle(batcher.call(1)), settle(batcher.call(2))];
    await turn();
    const down = new Error('connection terminated');
    batches[0].fail(down);
    expect(await Promise.all(failed)).toEqual([{ error: down }, { error: down }]);
    const next = batcher.call(3);
    await turn();
    batches[1].finish([{ ok: true, value: 'up' }]);
    await expect(next).resolves.toBe('up');
  });

  it('refuses to guess when run answers a different number of outcomes than calls', async () => {
    const { run, batches } = controlledRun<number>();
    const batcher = new QueryBatcher(run, { maxInFlight: 1, maxBatchSize: 10 });
    const results = [settle(batcher.call(1)), settle(batcher.call(2))];
    await turn();
    batches[0].finish([{ ok: true, value: 'only one' }]);
    for (const result of await Promise.all(results)) {
      expect(result).toEqual({ error: expect.any(Error) });
    }
  });
});
