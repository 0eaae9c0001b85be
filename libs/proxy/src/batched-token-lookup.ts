import type { ConsoleAuthTokenEntity, ConsoleAuthTokenRepository } from '@keyhole/db';

export interface BatchedTokenLookupOptions {
  /** Queries in flight at once; further checks wait and go together in the next one. Default 1. */
  maxQueriesInFlight?: number;
  /** Hashes per query at most. Default 500. */
  maxHashesPerQuery?: number;
}

interface Waiter {
  resolve: (row: ConsoleAuthTokenEntity | null) => void;
  reject: (error: unknown) => void;
}

/**
 * Checks token hashes against the cell database, coalescing the checks of concurrent connects
 * into one indexed query (`token_hash = ANY(...)`): a query per connect costs the proxy and
 * PostgreSQL more than the check itself, and under a flood of unknown tokens each one then costs
 * an array element instead of a round trip. Checks that arrive in the same turn of the event loop
 * go together; while `maxQueriesInFlight` queries are out, new checks queue and go in the next
 * one, so batches grow with the load and an idle proxy waits for nothing. A failed query fails
 * every check in it (the caller refuses: fail closed).
 */
export class BatchedTokenLookup {
  private queued = new Map<string, Waiter[]>();
  private inFlight = 0;
  private scheduled = false;
  private readonly maxQueriesInFlight: number;
  private readonly maxHashesPerQuery: number;

  constructor(
    private readonly tokens: Pick<ConsoleAuthTokenRepository, 'findValidByHashes'>,
    private readonly nowSeconds: () => number,
    options: BatchedTokenLookupOptions = {},
  ) {
    this.maxQueriesInFlight = options.maxQueriesInFlight ?? 1;
    this.maxHashesPerQuery = options.maxHashesPerQuery ?? 500;
  }

  /** The valid row (`expires` after now) of this SHA-256 hex hash, or null. */
  findValid(tokenHash: string): Promise<ConsoleAuthTokenEntity | null> {
    return new Promise((resolve, reject) => {
      const waiters = this.queued.get(tokenHash);
      if (waiters) waiters.push({ resolve, reject });
      else this.queued.set(tokenHash, [{ resolve, reject }]);
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight >= this.maxQueriesInFlight || this.queued.size === 0) return;
    this.scheduled = true;
    // After the I/O callbacks of this turn: every upgrade parsed meanwhile joins the query.
    setImmediate(this.send);
  }

  private readonly send = (): void => {
    this.scheduled = false;
    let batch: Map<string, Waiter[]>;
    if (this.queued.size <= this.maxHashesPerQuery) {
      batch = this.queued;
      this.queued = new Map();
    } else {
      batch = new Map();
      for (const [hash, waiters] of this.queued) {
        batch.set(hash, waiters);
        this.queued.delete(hash);
        if (batch.size === this.maxHashesPerQuery) break;
      }
    }
    this.inFlight += 1;
    this.tokens.findValidByHashes([...batch.keys()], this.nowSeconds()).then(
      (rows) => {
        const byHash = new Map(rows.map((row) => [row.tokenHash, row]));
        for (const [hash, waiters] of batch) {
          const row = byHash.get(hash) ?? null;
          for (const waiter of waiters) waiter.resolve(row);
        }
        this.done();
      },
      (error: unknown) => {
        for (const waiters of batch.values()) for (const waiter of waiters) waiter.reject(error);
        this.done();
      },
    );
    // Room for another query: the rest of an oversized queue goes at once.
    this.schedule();
  };

  private done(): void {
    this.inFlight -= 1;
    this.schedule();
  }
}
