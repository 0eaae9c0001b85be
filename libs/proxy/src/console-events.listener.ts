import { Logger } from '@nestjs/common';
import { Client, Notification } from 'pg';
import { CONSOLE_EVENTS_CHANNEL, ConsoleEvent, parseConsoleEvent } from '@keyhole/db';

export interface ConsoleEventsHandler {
  onEvent(event: ConsoleEvent): void;
  /** Called after every (re)connection: catch up with what happened while not listening. */
  reconcile(): Promise<void>;
}

const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 2_000;
/** First key of the advisory lock a proxy holds on its name (the second is the name's hash). */
const PROXY_NAME_LOCK_CLASS = 0x6b68_7078; // "khpx"

/** Client-side deadlines of the events connection (KEYHOLE_DB_CONNECT_TIMEOUT_MS, KEYHOLE_DB_QUERY_TIMEOUT_MS). */
export interface EventsConnectionDeadlines {
  connectTimeoutMs: number;
  queryTimeoutMs: number;
}

/**
 * One dedicated connection per proxy that LISTENs on the cell's console events channel, so a
 * revocation or an operator's kick reaches every replica at once (no polling per session). When
 * the connection drops it reconnects with backoff and reconciles, since notifications sent
 * meanwhile are lost. A connection that carries nothing cannot tell a database that stopped
 * answering (frozen, partitioned) from a quiet one: a `SELECT 1` with the query deadline every
 * `queryTimeoutMs` does, and a missed one counts as a lost connection.
 */
export class ConsoleEventsListener {
  private readonly logger = new Logger(ConsoleEventsListener.name);
  private client: Client | undefined;
  private stopped = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private delayMs = RECONNECT_MIN_MS;
  listening = false;
  /**
   * Whether this connection holds the lock on the proxy's name: no other running process records
   * sessions under it (a process that dies loses the lock with its connection).
   */
  holdsProxyName = false;

  /**
   * @param proxyName when set, the connection also takes a session advisory lock on it, for as
   *   long as it lives, so that the proxy can tell whether another process runs under its name.
   */
  constructor(
    private readonly databaseUrl: string,
    private readonly applicationName: string,
    private readonly deadlines: EventsConnectionDeadlines,
    private readonly handler: ConsoleEventsHandler,
    private readonly proxyName?: string,
  ) {}

  /** Connects and starts listening; resolves once listening (or rejects on the first failure). */
  async start(): Promise<void> {
    await this.connect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeatTimer);
    const client = this.client;
    this.client = undefined;
    this.listening = false;
    await client?.end().catch(() => undefined);
  }

  private async connect(): Promise<void> {
    const client = new Client({
      connectionString: this.databaseUrl,
      application_name: this.applicationName,
      keepAlive: true,
      connectionTimeoutMillis: this.deadlines.connectTimeoutMs,
      query_timeout: this.deadlines.queryTimeoutMs,
    });
    client.on('notification', (message: Notification) => this.onNotification(message));
    client.on('error', (error) => this.onLost(client, error));
    client.on('end', () => this.onLost(client));
    try {
      await client.connect();
      await client.query(`LISTEN ${CONSOLE_EVENTS_CHANNEL}`);
      if (this.proxyName !== undefined) {
        const {
          rows: [{ held }],
        } = await client.query<{ held: boolean }>('SELECT pg_try_advisory_lock($1, hashtext($2)) AS held', [
          PROXY_NAME_LOCK_CLASS,
          this.proxyName,
        ]);
        this.holdsProxyName = held;
        if (!held) {
          this.logger.warn(
            { proxyInstance: this.proxyName },
            'another process holds this proxy name (a second proxy configured with the same name, or the connection of a killed one not yet gone)',
          );
        }
      }
    } catch (error) {
      // A connection that missed a deadline still holds its socket: end() destroys it.
      await client.end().catch(() => undefined);
      throw error;
    }
    if (this.stopped) {
      await client.end();
      return;
    }
    this.client = client;
    this.listening = true;
    this.startHeartbeat(client);
    this.delayMs = RECONNECT_MIN_MS;
    await this.handler.reconcile().catch((error: unknown) => this.logger.warn({ err: error }, 'could not reconcile live sessions'));
  }

  private onNotification(message: Notification): void {
    if (message.channel !== CONSOLE_EVENTS_CHANNEL) {
      return;
    }
    const event = parseConsoleEvent(message.payload);
    if (!event) {
      this.logger.warn({ channel: message.channel }, 'ignored a malformed console event');
      return;
    }
    this.handler.onEvent(event);
  }

  private onLost(client: Client, error?: Error): void {
    if (client !== this.client || this.stopped) {
      return;
    }
    this.client = undefined;
    this.listening = false;
    clearInterval(this.heartbeatTimer);
    this.holdsProxyName = false;
    this.logger.warn({ err: error }, 'console events connection lost; reconnecting');
    client.end().catch(() => undefined);
    this.scheduleReconnect();
  }

  private startHeartbeat(client: Client): void {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => {
      client.query('SELECT 1').catch((error: unknown) => this.onLost(client, error instanceof Error ? error : undefined));
    }, this.deadlines.queryTimeoutMs);
    this.heartbeatTimer.unref();
  }

  private scheduleReconnect(): void {
    if (this.stopped) {
      return;
    }
    const delay = this.delayMs;
    this.delayMs = Math.min(this.delayMs * 2, RECONNECT_MAX_MS);
    this.retryTimer = setTimeout(() => {
      this.connect().catch((error: unknown) => {
        this.logger.warn({ err: error, retryInMs: this.delayMs }, 'console events connection failed');
        this.scheduleReconnect();
      });
    }, delay);
    this.retryTimer.unref();
  }
}
