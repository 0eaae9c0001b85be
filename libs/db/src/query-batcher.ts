/** What a batch gives back for one call: its value, or the error that call alone fails with. */
export type BatchOutcome<Output> = { ok: true; value: Output } | { ok: false; error: unknown };

export interface QueryBatcherOptions {
  /** Batches running at once; calls made meanwhile wait for one to finish and go out together. */
  maxInFlight: number;
  /** Calls in one batch at most (bounds the statement's size). */
  maxBatchSize: number;
}

interface Pending<Input, Output> {
  input: Input;
  resolve: (value: Output) => void;
  reject: (error: unknown) => void;
}

/**
 * Runs concurrent calls as one statement (group commit): calls made in the same event-loop turn,
 * or while `maxInFlight` batches are running, go out together, so under load one round trip and
 * one commit serve many requests; a lone call goes out at the end of its turn. A batch is sent
 * after each of its calls was made, so every call sees what was committed before it (a revoked
 * key, a moved cell, a token it raced with). `run` answers one outcome per input, in order; when
 * it throws, every call of that batch fails with its error.
 */
export class QueryBatcher<Input, Output> {
  private queue: Pending<Input, Output>[] = [];
  private inFlight = 0;
  private flushScheduled = false;

  constructor(
    private readonly run: (inputs: Input[]) => Promise<BatchOutcome<Output>[]>,
    private readonly options: QueryBatcherOptions,
  ) {}

  call(input: Input): Promise<Output> {
    return new Promise<Output>((resolve, reject) => {
      this.queue.push({ input, resolve, reject });
      this.scheduleFlush();
    });
  }

  private scheduleFlush(): void {
    if (this.flushScheduled || this.inFlight >= this.options.maxInFlight || this.queue.length === 0) {
      return;
    }
    this.flushScheduled = true;
    // setImmediate runs after the poll phase: every request parsed in this turn joins the batch.
    setImmediate(() => {
      this.flushScheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    while (this.inFlight < this.options.maxInFlight && this.queue.length > 0) {
      const batch = this.queue.splice(0, this.options.maxBatchSize);
      this.inFlight++;
      void this.runBatch(batch);
    }
  }

  /** A batch came back: the calls queued meanwhile go out before its callers run on. */
  private batchDone(): void {
    this.inFlight--;
    this.scheduleFlush();
  }

  private async runBatch(batch: Pending<Input, Output>[]): Promise<void> {
    let outcomes: BatchOutcome<Output>[];
    try {
      outcomes = await this.run(batch.map((pending) => pending.input));
      if (outcomes.length !== batch.length) {
        throw new Error(`a batch of ${batch.length} answered ${outcomes.length} outcomes`);
      }
    } catch (error) {
      this.batchDone();
      for (const pending of batch) {
        pending.reject(error);
      }
      return;
    }
    this.batchDone();
    batch.forEach((pending, index) => {
      const outcome = outcomes[index];
      if (outcome.ok) {
        pending.resolve(outcome.value);
      } else {
        pending.reject(outcome.error);
      }
    });
  }
}

/**
 * Lookups by key, batched: concurrent calls share one query (`fetch`, given each distinct key
 * once), and each call is answered with the row whose key is its own, or null. A row the query
 * returns for another key never answers a call.
 */
export function keyedLookups<Row>(
  fetch: (distinctKeys: string[]) => Promise<Row[]>,
  keyOf: (row: Row) => string,
  options: QueryBatcherOptions,
): QueryBatcher<string, Row | null> {
  return new QueryBatcher<string, Row | null>(async (keys) => {
    const rows = await fetch([...new Set(keys)]);
    const byKey = new Map(rows.map((row) => [keyOf(row), row]));
    return keys.map((key): BatchOutcome<Row | null> => ({ ok: true, value: byKey.get(key) ?? null }));
  }, options);
}
