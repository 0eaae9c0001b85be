import cluster, { Worker } from 'node:cluster';
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { AggregatorRegistry, Registry } from 'prom-client';

/*
 * KEYHOLE_PROXY_WORKERS > 1: a supervisor process starts that many proxy processes (Node's
 * cluster) on one port. Each worker accepts on the shared listening socket itself (no hand-off
 * through the supervisor), has its own cell database pool and revocation listener, and is a
 * replica like any other: session records name it, revocations and operator ends reach it through
 * the cell's NOTIFY channel, exclusive consoles are reserved in the database. The supervisor
 * holds no connection and no session; it forwards signals, replaces a worker that dies, and
 * answers /metrics for all of them (a scrape lands on any one worker).
 */

const METRICS_REQUEST = 'keyhole:metrics-request';
const METRICS_ANSWER = 'keyhole:metrics-answer';
/** More deaths of workers than this within the window and none is started again: the supervisor stops. */
const MAX_RESTARTS = 5;
const RESTART_WINDOW_MS = 60_000;
/** How long a worker waits for the supervisor's aggregated metrics. */
const METRICS_TIMEOUT_MS = 6_000;

interface MetricsRequest {
  type: typeof METRICS_REQUEST;
  id: string;
}

interface MetricsAnswer {
  type: typeof METRICS_ANSWER;
  id: string;
  text?: string;
  error?: string;
}

export interface SupervisorOptions {
  workers: number;
  cellName: string;
  host: string;
  logger: Logger;
}

/** Whether this process is a worker started by the supervisor. */
export function isProxyWorker(): boolean {
  return cluster.isWorker;
}

/** This worker's number (1, 2, ...; a replacement gets a new one), or undefined outside workers. */
export function workerId(): number | undefined {
  return cluster.worker?.id;
}

/**
 * The replica name in session records: the configured one, or `<hostname>:<port>` (the listen
 * port; `<hostname>:<pid>` when the port is picked at start). It stays the same across restarts,
 * so that a restarted proxy can end the sessions its killed run left live, and no two running
 * proxies share it (one port per host). Workers share the port, so each adds its number.
 */
export function proxyInstanceName(configured: string | undefined, host: string, port: number): string {
  const name = configured ?? (port === 0 ? `${host}:${process.pid}` : `${host}:${port}`);
  const id = workerId();
  return id === undefined ? name : `${name}/${id}`;
}

/** Runs the supervisor: starts the workers and stays until they have all exited. */
export function superviseWorkers(options: SupervisorOptions): void {
  const { logger } = options;
  // Each worker accepts on the listening socket itself: no per-connection hand-off through here.
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  const aggregator = new AggregatorRegistry();
  const running = new Set<Worker>();
  const listening = new Set<Worker>();
  const restarts: number[] = [];
  let announced = false;
  let stopping = false;
  let exitCode = 0;

  const start = (): void => {
    const worker = cluster.fork();
    running.add(worker);
    worker.on('message', (message: unknown) => {
      if (!isMetricsRequest(message)) {
        return;
      }
      const answer = (fields: Omit<MetricsAnswer, 'type' | 'id'>) => {
        if (worker.isConnected()) {
          worker.send({ type: METRICS_ANSWER, id: message.id, ...fields } satisfies MetricsAnswer);
        }
      };
      aggregator.clusterMetrics().then(
        (text) => answer({ text }),
        (error: unknown) => answer({ error: error instanceof Error ? error.message : String(error) }),
      );
    });
    worker.on('listening', (address) => {
      listening.add(worker);
      if (announced || listening.size < options.workers) {
        return;
      }
      announced = true;
      logger.info({ cell: options.cellName, host: options.host, workers: options.workers, port: address.port }, 'console proxy listening');
    });
  };

  const stop = (signal: NodeJS.Signals, code: number): void => {
    exitCode = Math.max(exitCode, code);
    if (!stopping) {
      logger.info({ signal, workers: running.size }, 'stopping the console proxy workers');
    }
    stopping = true;
    // Each worker drains its own sessions; one that already got the signal from the process
    // group ignores the second.
    for (const worker of running) {
      worker.process.kill(signal);
    }
    if (running.size === 0) {
      process.exit(exitCode);
    }
  };

  cluster.on('exit', (worker, code, signal) => {
    if (!running.delete(worker)) {
      return;
    }
    listening.delete(worker);
    const exited = { worker: worker.id, pid: worker.process.pid, code, signal };
    if (stopping) {
      if (code !== 0 && signal === null) {
        exitCode = Math.max(exitCode, 1);
      }
      if (running.size === 0) {
        process.exit(exitCode);
      }
      return;
    }
    if (!announced) {
      // As a single process would: a proxy that cannot start (database unreachable) exits.
      logger.error(exited, 'a console proxy worker exited before listening');
      stop('SIGTERM', typeof code === 'number' && code > 0 ? code : 1);
      return;
    }
    const now = Date.now();
    restarts.push(now);
    while (restarts.length > 0 && restarts[0] < now - RESTART_WINDOW_MS) {
      restarts.shift();
    }
    if (restarts.length > MAX_RESTARTS) {
      logger.fatal({ ...exited, restarts: restarts.length, windowMs: RESTART_WINDOW_MS }, 'console proxy workers keep exiting: stopping');
      stop('SIGTERM', 1);
      return;
    }
    logger.error(exited, 'a console proxy worker exited: starting another');
    start();
  });

  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => stop(signal, 0));
  }
  // Each worker holds its own routes table and TLS certificate: a reload is theirs to do.
  process.on('SIGHUP', () => {
    logger.info({ workers: running.size }, 'SIGHUP: the workers reload their routes and TLS certificate');
    for (const worker of running) {
      worker.process.kill('SIGHUP');
    }
  });
  for (let started = 0; started < options.workers; started++) {
    start();
  }
}

/**
 * In a worker: lets the supervisor collect this registry, and drains (as on SIGTERM) if the
 * supervisor goes away, so that no worker outlives it.
 */
export function joinSupervisor(registry: Registry): void {
  AggregatorRegistry.setRegistries([registry]);
  // Installs prom-client's answer to the supervisor's collection requests.
  new AggregatorRegistry();
  process.once('disconnect', () => process.kill(process.pid, 'SIGTERM'));
}

/** In a worker: the metrics of every worker, summed by the supervisor. */
export function clusterMetricsText(): Promise<string> {
  const id = randomUUID();
  return new Promise<string>((resolve, reject) => {
    const onMessage = (message: unknown): void => {
      if (!isMetricsAnswer(message) || message.id !== id) {
        return;
      }
      finish();
      if (message.text !== undefined) {
        resolve(message.text);
      } else {
        reject(new Error(`the supervisor could not collect the workers' metrics: ${message.error ?? 'no answer'}`));
      }
    };
    const timer = setTimeout(() => {
      finish();
      reject(new Error(`the supervisor did not answer with the workers' metrics within ${METRICS_TIMEOUT_MS} ms`));
    }, METRICS_TIMEOUT_MS);
    const finish = (): void => {
      clearTimeout(timer);
      process.off('message', onMessage);
    };
    process.on('message', onMessage);
    const failed = (error: Error | null): void => {
      if (!error) {
        return;
      }
      finish();
      reject(new Error(`no channel to the supervisor: ${error.message}`));
    };
    if (process.send) {
      process.send({ type: METRICS_REQUEST, id } satisfies MetricsRequest, failed);
    } else {
      failed(new Error('not a worker'));
    }
  });
}

function isMetricsRequest(message: unknown): message is MetricsRequest {
  return (
    typeof message === 'object' &&
    message !== null &&
    (message as MetricsRequest).type === METRICS_REQUEST &&
    typeof (message as MetricsRequest).id === 'string'
  );
}

function isMetricsAnswer(message: unknown): message is MetricsAnswer {
  return typeof message === 'object' && message !== null && (message as MetricsAnswer).type === METRICS_ANSWER;
}
