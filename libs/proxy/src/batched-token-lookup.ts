import { keyedLookups, QueryBatcher } from '@keyhole/db';
import type { ConsoleAuthTokenRepository, ConsoleGrantRow } from '@keyhole/db';

export interface BatchedTokenLookupOptions {
  /** Queries in flight at once; further checks wait and go together in the next one. Default 1. */
  maxQueriesInFlight?: number;
  /** Checks per query at most. Default 500. */
  maxHashesPerQuery?: number;
}

/**
 * Checks token hashes against the cell database, coalescing the checks of concurrent connects
 * into one indexed query (`token_hash = ANY(...)`, each hash asked once): a query per connect
 * costs the proxy and PostgreSQL more than the check itself, and under a flood of unknown tokens
 * each one then costs an array element instead of a round trip. With one query out at a time
 * (the default), batches grow with the load and an idle proxy waits for nothing. A failed query
 * fails every check in it (the caller refuses: fail closed).
 */
export class BatchedTokenLookup {
  private readonly batcher: QueryBatcher<string, ConsoleGrantRow | null>;

  constructor(
    private readonly tokens: Pick<ConsoleAuthTokenRepository, 'findValidByHashes'>,
    private readonly nowSeconds: () => number,
    options: BatchedTokenLookupOptions = {},
  ) {
    this.batcher = keyedLookups(
      (distinct) => this.tokens.findValidByHashes(distinct, this.nowSeconds()),
      (row) => row.tokenHash,
      { maxInFlight: options.maxQueriesInFlight ?? 1, maxBatchSize: options.maxHashesPerQuery ?? 500 },
    );
  }

  /** The valid row (`expires` after now) of this SHA-256 hex hash, or null. */
  findValid(tokenHash: string): Promise<ConsoleGrantRow | null> {
    return this.batcher.call(tokenHash);
  }
}
