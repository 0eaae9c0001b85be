import { ChildProcess, fork } from 'node:child_process';
import path from 'node:path';
import { withDeadline } from '../test/support/wait';
import type {
  ConnectJob,
  ConnectResult,
  FromGenerator,
  HttpJob,
  HttpResult,
  SessionsJob,
  SessionsOpened,
  SessionsProbed,
  ThroughputJob,
  ThroughputResult,
  ToGenerator,
} from './protocol';
import { onCleanup } from './procs';

/** One load generator process (bench/loadgen.ts), driven over IPC. */
export class Generator {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  private readonly listeners = new Set<(message: FromGenerator) => void>();
  private exited = false;

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    child.on('message', (message: FromGenerator) => {
      if (message.type === 'result' || message.type === 'error') {
        const waiter = this.pending.get(message.id);
        this.pending.delete(message.id);
        if (message.type === 'result') {
          waiter?.resolve(message.result);
        } else {
          waiter?.reject(new Error(`${name}: ${message.message}`));
        }
      }
      for (const listener of this.listeners) {
        listener(message);
      }
    });
    child.once('exit', (code, signal) => {
      this.exited = true;
      for (const waiter of this.pending.values()) {
        waiter.reject(new Error(`${name} exited (${code ?? signal})`));
      }
      this.pending.clear();
    });
  }

  static async start(name: string): Promise<Generator> {
    const child = fork(path.join(__dirname, 'run.cjs'), ['--role=loadgen'], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      execArgv: [],
    });
    const generator = new Generator(name, child);
    onCleanup(() => generator.stop());
    await withDeadline(
      generator.next((message) => message.type === 'ready'),
      20_000,
      `${name} to start`,
    );
    return generator;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  private post(message: ToGenerator): void {
    if (!this.exited) {
      this.child.send(message);
    }
  }

  private next<T extends FromGenerator>(accept: (message: FromGenerator) => boolean): Promise<T> {
    return new Promise((resolve) => {
      const listener = (message: FromGenerator): void => {
        if (!accept(message)) {
          return;
        }
        this.listeners.delete(listener);
        resolve(message as T);
      };
      this.listeners.add(listener);
    });
  }

  private job<T>(job: ConnectJob | ThroughputJob | HttpJob | SessionsJob, timeoutMs: number): Promise<T> {
    const id = this.nextId++;
    const result = new Promise<T>((resolve, reject) => this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject }));
    this.post({ type: 'job', id, job });
    return withDeadline(result, timeoutMs, `the ${job.type} job of ${this.name}`);
  }

  connect(job: Omit<ConnectJob, 'type'>): Promise<ConnectResult> {
    return this.job({ type: 'connect', ...job }, job.durationMs + job.attemptTimeoutMs + 30_000);
  }

  throughput(job: Omit<ThroughputJob, 'type'>): Promise<ThroughputResult> {
    return this.job({ type: 'throughput', ...job }, job.warmupMs + job.durationMs + 30_000);
  }

  http(job: Omit<HttpJob, 'type'>): Promise<HttpResult> {
    return this.job({ type: 'http', ...job }, job.durationMs + 60_000);
  }

  /** Ends the running job early (it reports what it measured so far). */
  stopJob(): void {
    this.post({ type: 'stop' });
  }

  /**
   * Opens `count` sessions and keeps them; the caller measures, then probes and closes them
   * through the returned handle.
   */
  async sessions(job: Omit<SessionsJob, 'type'>): Promise<{
    opened: SessionsOpened;
    probe: () => Promise<SessionsProbed>;
    close: () => Promise<void>;
  }> {
    const opened = this.next<SessionsOpened>((message) => message.type === 'opened');
    const done = this.job<{ closed: number }>({ type: 'sessions', ...job }, job.openTimeoutMs + 15 * 60_000);
    done.catch(() => undefined);
    const openedMessage = await withDeadline(
      Promise.race([opened, done.then(() => Promise.reject(new Error('sessions job ended early')))]),
      job.openTimeoutMs + 30_000,
      'the sessions to open',
    );
    return {
      opened: openedMessage,
      probe: async () => {
        const probed = this.next<SessionsProbed>((message) => message.type === 'probed');
        this.post({ type: 'probe' });
        return withDeadline(probed, 120_000, 'the sessions to answer a probe');
      },
      close: async () => {
        this.post({ type: 'close' });
        await withDeadline(done, 180_000, 'the sessions to close');
      },
    };
  }

  async stop(): Promise<void> {
    if (this.exited) {
      return;
    }
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.disconnect();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
}
