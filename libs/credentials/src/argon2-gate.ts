/**
 * At most `concurrency` argon2 verifications at once, the others waiting in a bounded queue that is
 * served fairly: one FIFO per lane (the client address) and the lanes in turn (round robin). A
 * client that floods the API with keys to verify queues behind itself, not in front of everyone
 * else: a new client's first verification waits for at most one turn of each busy lane. When the
 * queue is full, `tryRun` refuses at once instead of queueing (the caller answers 503), so a flood
 * can neither grow memory nor make latency unbounded.
 */
export class Argon2Gate {
  private running = 0;
  private waiting = 0;
  /** Waiting starts per lane, lanes in turn order (a Map keeps insertion order). */
  private readonly lanes = new Map<string, (() => void)[]>();

  /**
   * @param concurrency verifications run at once (at least 1)
   * @param queueLimit verifications that may wait for a slot (0 = none wait)
   */
  constructor(
    private readonly concurrency: number,
    private readonly queueLimit: number,
  ) {
    if (!Number.isInteger(concurrency) || concurrency < 1 || !Number.isInteger(queueLimit) || queueLimit < 0) {
      throw new Error('argon2 gate: concurrency must be a positive integer and the queue limit a non-negative one');
    }
  }

  /** Verifications running now. */
  get inFlight(): number {
    return this.running;
  }

  /** Verifications waiting for a slot. */
  get queued(): number {
    return this.waiting;
  }

  /**
   * Runs `task` in `lane` when a slot is free and resolves with its result; null, without running
   * it, when every slot is taken and the queue is full.
   */
  tryRun<T>(lane: string, task: () => Promise<T>): Promise<T> | null {
    if (this.running < this.concurrency) {
      this.running += 1;
      return this.runHolding(task);
    }
    if (this.waiting >= this.queueLimit) {
      return null;
    }
    this.waiting += 1;
    return new Promise<void>((resolve) => {
      const queue = this.lanes.get(lane);
      if (queue) {
        queue.push(resolve);
      } else {
        this.lanes.set(lane, [resolve]);
      }
    }).then(() => this.runHolding(task));
  }

  /** Runs a task that holds a slot, and hands the slot on when it ends. */
  private async runHolding<T>(task: () => Promise<T>): Promise<T> {
    try {
      return await task();
    } finally {
      this.handOn();
    }
  }

  /** Gives the slot to the first waiter of the next lane, which then goes to the end of the turn. */
  private handOn(): void {
    const next = this.lanes.entries().next();
    if (next.done) {
      this.running -= 1;
      return;
    }
    const [lane, queue] = next.value;
    const start = queue.shift() as () => void;
    this.lanes.delete(lane);
    if (queue.length > 0) {
      this.lanes.set(lane, queue);
    }
    this.waiting -= 1;
    // The slot passes straight to the waiter: `running` stays as it is.
    start();
  }
}
