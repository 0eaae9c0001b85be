import type { ConsoleGrantRow } from '@keyhole/db';
import { BatchedTokenLookup } from './batched-token-lookup';

function row(tokenHash: string, id: number): ConsoleGrantRow {
  return {
    id,
    tokenHash,
    consoleType: 'novnc',
    host: 'h',
    port: 5900,
    internalAccessPath: null,
    instanceUuid: 'i',
    expires: 2_000,
    accessUrlBase: null,
  };
}

const hash = (n: number): string => n.toString(16).padStart(64, '0');

/** A repository whose queries the test answers by hand. */
function fakeTokens(stored: ConsoleGrantRow[]) {
  const queries: { hashes: string[]; nowSeconds: number; answer: (rows?: ConsoleGrantRow[]) => void; fail: (error: Error) => void }[] = [];
  const findValidByHashes = jest.fn(
    (hashes: string[], nowSeconds: number) =>
      new Promise<ConsoleGrantRow[]>((resolve, reject) => {
        queries.push({
          hashes,
          nowSeconds,
          answer: (rows) => resolve(rows ?? stored.filter((candidate) => hashes.includes(candidate.tokenHash))),
          fail: reject,
        });
      }),
  );
  return { findValidByHashes, queries };
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('BatchedTokenLookup', () => {
  it('checks the tokens of one turn of the event loop in one query, and answers each with its own row or null', async () => {
    const tokens = fakeTokens([row(hash(1), 1), row(hash(2), 2)]);
    const lookup = new BatchedTokenLookup(tokens, () => 1_000);
    const answers = Promise.all([
      lookup.findValid(hash(1)),
      lookup.findValid(hash(2)),
      lookup.findValid(hash(3)),
      lookup.findValid(hash(1)),
    ]);
    await nextTurn();
    expect(tokens.queries).toHaveLength(1);
    // Duplicates are asked once.
    expect(tokens.queries[0].hashes).toEqual([hash(1), hash(2), hash(3)]);
    expect(tokens.queries[0].nowSeconds).toBe(1_000);
    tokens.queries[0].answer();
    const [first, second, unknown, again] = await answers;
    expect([first?.id, second?.id, unknown, again?.id]).toEqual([1, 2, null, 1]);
  });

  it('queues checks while its queries are out and sends them together when one comes back', async () => {
    const tokens = fakeTokens([row(hash(5), 5)]);
    const lookup = new BatchedTokenLookup(tokens, () => 1_000, { maxQueriesInFlight: 1 });
    const first = lookup.findValid(hash(1));
    await nextTurn();
    const later = [lookup.findValid(hash(4)), lookup.findValid(hash(5))];
    await nextTurn();
    expect(tokens.queries).toHaveLength(1);
    tokens.queries[0].answer();
    expect(await first).toBeNull();
    await nextTurn();
    expect(tokens.queries).toHaveLength(2);
    expect(tokens.queries[1].hashes).toEqual([hash(4), hash(5)]);
    tokens.queries[1].answer();
    expect((await Promise.all(later)).map((found) => found?.id ?? null)).toEqual([null, 5]);
  });

  it('splits a queue longer than the query limit', async () => {
    const tokens = fakeTokens([]);
    const lookup = new BatchedTokenLookup(tokens, () => 1_000, { maxHashesPerQuery: 2, maxQueriesInFlight: 2 });
    const answers = Promise.all([1, 2, 3].map((n) => lookup.findValid(hash(n))));
    await nextTurn();
    await nextTurn();
    expect(tokens.queries.map((query) => query.hashes)).toEqual([[hash(1), hash(2)], [hash(3)]]);
    for (const query of tokens.queries) {
      query.answer();
    }
    expect(await answers).toEqual([null, null, null]);
  });

  it('fails every check of a failed query (the caller refuses: fail closed), and the next checks query again', async () => {
    const tokens = fakeTokens([row(hash(1), 1)]);
    const lookup = new BatchedTokenLookup(tokens, () => 1_000);
    const answers = [lookup.findValid(hash(1)), lookup.findValid(hash(2))];
    await nextTurn();
    tokens.queries[0].fail(new Error('connection terminated'));
    for (const answer of answers) {
      await expect(answer).rejects.toThrow('connection terminated');
    }
    const again = lookup.findValid(hash(1));
    await nextTurn();
    tokens.queries[1].answer();
    expect((await again)?.id).toBe(1);
  });

  it('never answers a token with the row of another hash', async () => {
    const tokens = fakeTokens([]);
    const lookup = new BatchedTokenLookup(tokens, () => 1_000);
    const answer = lookup.findValid(hash(1));
    await nextTurn();
    // Whatever the database returns, only a row whose hash is the one asked for counts.
    tokens.queries[0].answer([row(hash(2), 2)]);
    expect(await answer).toBeNull();
  });
});
