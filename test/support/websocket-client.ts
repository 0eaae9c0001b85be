import { IncomingHttpHeaders } from 'node:http';
import WebSocket, { ClientOptions, RawData } from 'ws';
import { withDeadline } from './wait';

/*
 * A websocket client for the console proxy tests, built on `ws` (a real client speaking the real
 * protocol). Everything it waits for has a deadline, and every client it creates is tracked so
 * that `terminateAllClients()` in afterEach/afterAll leaves no socket behind.
 */

const DEFAULT_TIMEOUT_MS = 5_000;

const clients = new Set<WebSocket>();

export interface CloseEvent {
  code: number;
  reason: string;
  /** Date.now() when the close event fired. */
  atMs: number;
}

export interface RefusedUpgrade {
  status: number;
  body: string;
  headers: IncomingHttpHeaders;
}

export interface ConsoleClientOptions extends ClientOptions {
  /** Subprotocols to offer; none by default. */
  protocols?: string[];
  /** Keep every message (default true); turn off for large streams checked with `onMessage`. */
  keepMessages?: boolean;
  /** Called with every message, before it is kept. */
  onMessage?: (data: Buffer) => void;
  /** Deadline for the websocket to open. */
  timeoutMs?: number;
}

/** An open websocket plus what it received and how it ended. */
export class ConsoleClient {
  private readonly chunks: Buffer[] = [];
  private readonly byteWaiters = new Set<() => void>();
  receivedBytes = 0;
  /** Resolves when the websocket closes, whoever closed it. */
  readonly closed: Promise<CloseEvent>;
  closeEvent: CloseEvent | undefined;

  constructor(
    readonly ws: WebSocket,
    private readonly options: ConsoleClientOptions,
  ) {
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data: RawData) => {
      const bytes = data as Buffer;
      this.receivedBytes += bytes.length;
      options.onMessage?.(bytes);
      if (options.keepMessages !== false) {
        this.chunks.push(bytes);
      }
      for (const wake of this.byteWaiters) {
        wake();
      }
    });
    this.closed = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        this.closeEvent = { code, reason: reason.toString(), atMs: Date.now() };
        clients.delete(ws);
        for (const wake of this.byteWaiters) {
          wake();
        }
        resolve(this.closeEvent);
      });
    });
    // Errors after the upgrade (a reset) end in a close event, which is what tests look at.
    ws.on('error', () => undefined);
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Everything received so far, in order. */
  received(): Buffer {
    return Buffer.concat(this.chunks);
  }

  send(data: Buffer | string): Promise<void> {
    return new Promise((resolve, reject) => this.ws.send(data, (error) => (error ? reject(error) : resolve())));
  }

  /**
   * Sends `payload` as messages of random sizes (1 byte to 256 KiB, so frame and segment boundaries
   * fall anywhere), at most 32 unacknowledged at a time.
   */
  async sendInRandomChunks(payload: Buffer): Promise<void> {
    let offset = 0;
    let sends: Promise<void>[] = [];
    while (offset < payload.length) {
      const length = Math.min(payload.length - offset, 1 + Math.floor(Math.random() * 256 * 1024));
      sends.push(this.send(payload.subarray(offset, offset + length)));
      offset += length;
      if (sends.length === 32) {
        await Promise.all(sends);
        sends = [];
      }
    }
    await Promise.all(sends);
  }

  /** Waits until at least `count` bytes were received in total; fails at the deadline or on close. */
  async waitForBytes(count: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.receivedBytes < count) {
      if (this.closeEvent) {
        throw new Error(
          `websocket closed (${this.closeEvent.code} ${this.closeEvent.reason}) after ${this.receivedBytes} of ${count} bytes`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`received ${this.receivedBytes} of ${count} bytes within ${timeoutMs} ms`);
      }
      await new Promise<void>((resolve) => {
        const waiters = this.byteWaiters;
        const wake = () => {
          clearTimeout(timer);
          waiters.delete(wake);
          resolve();
        };
        const timer = setTimeout(wake, left);
        waiters.add(wake);
      });
    }
    return this.options.keepMessages === false ? Buffer.alloc(0) : this.received();
  }

  /** Sends `data` and waits for the same number of bytes to come back (through an echo console). */
  async roundTrip(data: Buffer | string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Buffer> {
    const before = this.receivedBytes;
    const length = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
    await this.send(data);
    const all = await this.waitForBytes(before + length, timeoutMs);
    return all.subarray(before, before + length);
  }

  /** Waits for the close event. */
  waitForClose(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<CloseEvent> {
    return withDeadline(this.closed, timeoutMs, 'the websocket to close');
  }

  /** Closes from the client side (normal closure) and waits until closed. */
  async close(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<CloseEvent> {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.close(1000);
    }
    return this.waitForClose(timeoutMs);
  }
}

/** Opens a websocket and waits for it to be open; a refused upgrade fails with its status. */
export function connectConsole(url: string, options: ConsoleClientOptions = {}): Promise<ConsoleClient> {
  const { protocols, keepMessages: _keep, onMessage: _onMessage, timeoutMs = DEFAULT_TIMEOUT_MS, ...clientOptions } = options;
  const ws = new WebSocket(url, protocols ?? [], { handshakeTimeout: timeoutMs, ...clientOptions });
  clients.add(ws);
  // Created before 'open' so no early message is missed.
  const client = new ConsoleClient(ws, options);
  return withDeadline(
    new Promise<ConsoleClient>((resolve, reject) => {
      ws.once('open', () => resolve(client));
      ws.once('unexpected-response', (_request, response) => {
        reject(new Error(`upgrade refused with HTTP ${response.statusCode}`));
        response.resume();
        ws.terminate();
      });
      ws.once('error', reject);
    }),
    timeoutMs + 500,
    `the websocket to ${redactUrl(url)} to open`,
  );
}

/**
 * Attempts an upgrade that the proxy must refuse before accepting: resolves with the HTTP status,
 * headers and body of the refusal; fails if a websocket opens instead.
 */
export function expectRefusedUpgrade(
  url: string,
  options: ClientOptions & { protocols?: string[]; timeoutMs?: number } = {},
): Promise<RefusedUpgrade> {
  const { protocols, timeoutMs = DEFAULT_TIMEOUT_MS, ...clientOptions } = options;
  return attemptThatMustNotOpen<RefusedUpgrade>(
    url,
    protocols ?? [],
    { handshakeTimeout: timeoutMs, ...clientOptions },
    `the upgrade to ${redactUrl(url)} to be refused`,
    (ws, resolve, reject) => {
      ws.once('unexpected-response', (_request, response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.once('end', () => {
          clients.delete(ws);
          resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), headers: response.headers });
        });
        response.once('error', reject);
      });
      ws.once('error', reject);
      ws.once('close', () => clients.delete(ws));
    },
  );
}

/** The error of an upgrade attempt that got no HTTP answer at all (connection refused, reset). */
export function expectUpgradeError(url: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Error & { code?: string }> {
  return attemptThatMustNotOpen<Error>(url, [], { handshakeTimeout: timeoutMs }, 'the upgrade to fail', (ws, resolve, reject) => {
    ws.once('unexpected-response', (_request, response) => {
      response.resume();
      ws.terminate();
      reject(new Error(`the upgrade got an HTTP answer (${response.statusCode}) instead of a connection error`));
    });
    ws.once('error', (error) => {
      clients.delete(ws);
      resolve(error);
    });
  });
}

/**
 * A tracked websocket that fails the attempt if it opens; `settle` listens for the outcome the
 * caller expects. Bounded by the handshake timeout and half a second.
 */
function attemptThatMustNotOpen<T>(
  url: string,
  protocols: string[],
  options: ClientOptions & { handshakeTimeout: number },
  what: string,
  settle: (ws: WebSocket, resolve: (value: T) => void, reject: (error: unknown) => void) => void,
): Promise<T> {
  const ws = new WebSocket(url, protocols, options);
  clients.add(ws);
  return withDeadline(
    new Promise<T>((resolve, reject) => {
      ws.once('open', () => {
        ws.terminate();
        reject(new Error('the upgrade was accepted: a websocket opened'));
      });
      settle(ws, resolve, reject);
    }),
    options.handshakeTimeout + 500,
    what,
  );
}

/** Terminates every websocket these helpers opened and that is still open. */
/**
 * Asserts that the proxy closed a session by policy: code 1008 with `reason`, less than `withinMs`
 * after `since` (Date.now() when the cause happened) and, with `atLeastMs`, not before that.
 */
export function expectPolicyClose(
  close: CloseEvent,
  reason: string,
  { since, withinMs, atLeastMs }: { since: number; withinMs: number; atLeastMs?: number },
): void {
  expect(close).toMatchObject({ code: 1008, reason });
  if (atLeastMs !== undefined) {
    expect(close.atMs - since).toBeGreaterThanOrEqual(atLeastMs);
  }
  expect(close.atMs - since).toBeLessThan(withinMs);
}

export function terminateAllClients(): void {
  for (const ws of clients) {
    ws.terminate();
  }
  clients.clear();
}

/** A URL without its query (which holds the token), for error messages. */
function redactUrl(url: string): string {
  const query = url.indexOf('?');
  return query === -1 ? url : `${url.slice(0, query)}?…`;
}
