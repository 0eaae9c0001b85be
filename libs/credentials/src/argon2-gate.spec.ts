import { Argon2Gate } from './argon2-gate';

/** A task that runs until the test ends it, recording when it started. */
function controlledTask(started: string[], name: string) {
  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  return {
    run: async () => {
      started.push(name);
      await done;
      return name;
    },
    finish: () => finish(),
  };
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

/** `gate.tryRun`, failing the test when the gate refuses. */
function admitted<T>(gate: Argon2Gate, lane: string, task: () => Promise<T>): Promise<T> {
  const running = gate.tryRun(lane, task);
  if (running === null) {
    throw new Error('the gate refused a task it had room for');
  }
  return running;
}

describe('Argon2Gate', () => {
  it('runs at most `concurrency` tasks at once and refuses at once when the queue is full', async () => {
    const gate = new Argon2Gate(2, 1);
    const started: string[] = [];
    const tasks = ['a', 'b', 'c'].map((name) => controlledTask(started, name));
    const running = tasks.map((task) => admitted(gate, 'lane', task.run));
    await settle();
    expect(started).toEqual(['a', 'b']);
    expect({ inFlight: gate.inFlight, queued: gate.queued }).toEqual({ inFlight: 2, queued: 1 });
    expect(gate.tryRun('lane', async () => 'd')).toBeNull();
    tasks[0].finish();
    await settle();
    expect(started).toEqual(['a', 'b', 'c']);
    tasks[1].finish();
    tasks[2].finish();
    await expect(Promise.all(running)).resolves.toEqual(['a', 'b', 'c']);
    expect({ inFlight: gate.inFlight, queued: gate.queued }).toEqual({ inFlight: 0, queued: 0 });
  });

  it('serves lanes in turn: a newcomer waits for one task per busy lane, not for a whole flood', async () => {
    const gate = new Argon2Gate(1, 100);
    const started: string[] = [];
    const first = controlledTask(started, 'flood-0');
    const flood = Array.from({ length: 10 }, (_, index) => controlledTask(started, `flood-${index + 1}`));
    const newcomer = controlledTask(started, 'newcomer');
    const all = [admitted(gate, 'flooder', first.run), ...flood.map((task) => admitted(gate, 'flooder', task.run))];
    all.push(admitted(gate, 'newcomer', newcomer.run));
    // The flooder's lane came first, so it has the next turn; then the newcomer's.
    first.finish();
    await settle();
    flood[0].finish();
    await settle();
    expect(started).toEqual(['flood-0', 'flood-1', 'newcomer']);
    newcomer.finish();
    for (const task of flood) {
      task.finish();
    }
    await Promise.all(all);
    expect(started.slice(3)).toEqual(flood.slice(1).map((_, index) => `flood-${index + 2}`));
  });

  it('frees the slot of a task that fails', async () => {
    const gate = new Argon2Gate(1, 0);
    await expect(gate.tryRun('lane', () => Promise.reject(new Error('unreadable hash')))).rejects.toThrow('unreadable hash');
    await expect(gate.tryRun('lane', async () => 'next')).resolves.toBe('next');
  });
});
