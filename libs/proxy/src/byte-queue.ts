/**
 * Bytes received from one peer during a protocol exchange, read back in exact lengths. Whoever owns
 * the peer pushes what arrives (`push`) and reports its end (`fail`); `read(n)` resolves with the
 * next `n` bytes once they are all there. What arrived beyond the reads is handed back by
 * `takeRest()`, for the byte pump that follows.
 *
 * Bounded: more than `maxBufferedBytes` unread (a peer that talks out of turn) fails the queue, and
 * a read longer than that is refused, so a length field from the network never sizes an allocation.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failure: Error | undefined;
  private waiter: { length: number; resolve: (bytes: Buffer) => void; reject: (error: Error) => void } | undefined;

  /**
   * @param maxBufferedBytes most bytes held unread, and the longest read.
   * @param overflow the error a peer that sends more than that fails with.
   */
  constructor(
    private readonly maxBufferedBytes: number,
    private readonly overflow: () => Error,
  ) {}

  /** Whether a read is waiting for bytes now (the peer is the one expected to speak). */
  get waiting(): boolean {
    return this.waiter !== undefined;
  }

  push(chunk: Buffer): void {
    if (this.failure !== undefined) {
      return;
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.serve();
    if (this.buffered > this.maxBufferedBytes) {
      this.fail(this.overflow());
    }
  }

  /** The peer is gone (or the exchange is abandoned): the waiting read and every later one reject with `error`. */
  fail(error: Error): void {
    if (this.failure !== undefined) {
      return;
    }
    this.failure = error;
    this.chunks = [];
    this.buffered = 0;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(error);
  }

  /** The next `length` bytes (one read at a time). */
  read(length: number): Promise<Buffer> {
    if (this.failure !== undefined) {
      return Promise.reject(this.failure);
    }
    if (this.waiter !== undefined) {
      return Promise.reject(new Error('ByteQueue: one read at a time'));
    }
    if (length > this.maxBufferedBytes) {
      return Promise.reject(this.overflow());
    }
    return new Promise((resolve, reject) => {
      this.waiter = { length, resolve, reject };
      this.serve();
    });
  }

  /** What arrived and was not read; the queue takes nothing more. */
  takeRest(): Buffer {
    const rest = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    this.fail(new Error('ByteQueue: handed over'));
    return rest ?? Buffer.alloc(0);
  }

  private serve(): void {
    const waiter = this.waiter;
    if (waiter === undefined || this.buffered < waiter.length) {
      return;
    }
    this.waiter = undefined;
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const bytes = all.subarray(0, waiter.length);
    const rest = all.subarray(waiter.length);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    waiter.resolve(bytes);
  }
}
