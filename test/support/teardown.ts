import { terminateAllClients } from './websocket-client';

interface Entry {
  stop: () => Promise<void>;
  stopping?: Promise<void>;
}

/**
 * What a test file started and must stop. `add` registers each thing as it starts; a test may stop
 * one early with `stop`; the file's afterAll calls `stopAll`. Each thing is stopped once, however
 * often it is asked to, and `stopAll` goes last started first: a proxy before the console it dials
 * and the database it reads. A failing stop does not keep the others from running; `stopAll`
 * rethrows the first failure once all have run.
 */
export class Teardown {
  private readonly entries = new Map<unknown, Entry>();

  /** Registers `resource` and how to stop it (by default its `close()`); returns `resource`. */
  add<T extends { close(): Promise<void> }>(resource: T): T;
  add<T>(resource: T, stop: (resource: T) => Promise<void>): T;
  add<T>(resource: T, stop?: (resource: T) => Promise<void>): T {
    this.entries.set(resource, { stop: () => (stop ? stop(resource) : (resource as { close(): Promise<void> }).close()) });
    return resource;
  }

  /**
   * Stops `resource` now, with `how` instead of its registered stop if given (a signal, say), or
   * returns the stop already under way.
   */
  stop<T>(resource: T, how?: (resource: T) => Promise<void>): Promise<void> {
    const entry = this.entries.get(resource);
    if (!entry) {
      throw new Error('stop() of something this teardown did not start');
    }
    entry.stopping ??= how ? how(resource) : entry.stop();
    return entry.stopping;
  }

  /**
   * Stops everything not stopped yet, last started first. A stop a test asked for is awaited too,
   * but its failure is that test's, not reported again here.
   */
  async stopAll(): Promise<void> {
    const failures: unknown[] = [];
    for (const [resource, entry] of [...this.entries].reverse()) {
      if (entry.stopping) {
        await entry.stopping.catch(() => undefined);
      } else {
        await this.stop(resource).catch((error: unknown) => failures.push(error));
      }
    }
    if (failures.length > 0) {
      throw failures[0];
    }
  }
}

/**
 * The hooks of a file that opens websocket clients: every client is dropped after each test, and
 * after the last one everything `teardown` holds is stopped.
 */
export function stopAfterTests(teardown: Teardown): void {
  afterEach(() => {
    terminateAllClients();
  });
  afterAll(async () => {
    terminateAllClients();
    await teardown.stopAll();
  });
}
