import { Logger } from '@nestjs/common';
import { createHash, timingSafeEqual } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { Counter, Gauge, Registry } from 'prom-client';
import { Client, ClientChannel } from 'ssh2';
import { isHostname } from '@keyhole/core';
import type { Route, SshNodeSpec, SshVia } from './routes';
import type { SshPrivateKey } from './ssh-private-key';
import type { Dialer } from './upstream-connector';
import { UpstreamError } from './upstream.errors';

/** Bound on one SSH handshake (TCP connect, key exchange, authentication), whoever waits for it. */
const HANDSHAKE_TIMEOUT_MS = 15_000;
/** Keepalive: a node that answers none of 3 probes 10 s apart is dropped (and reconnected on demand). */
const KEEPALIVE_INTERVAL_MS = 10_000;
const KEEPALIVE_COUNT_MAX = 3;
/** After a failed handshake, connects fail fast for this long, doubling per failure up to the maximum. */
const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 15_000;

/** A node whose key has been read: what the pool connects to. */
export type DialableNodeSpec = SshNodeSpec & { key: SshPrivateKey };

/** An ssh route as the pool sees it before its dialer exists. */
export interface SshRouteSpec {
  name: string;
  node: DialableNodeSpec;
  mode: SshVia['mode'];
}

/**
 * The process's SSH connections to proxy nodes: one per node identity (host, port, user, key,
 * pinned host key, and the node it is reached through), shared by every session that goes through
 * it, one channel per console. A handshake happens when a node is first needed and after it went
 * away (restart, keepalive failure), never per console connect while it is up. After a failed
 * handshake, connects fail fast during a backoff instead of hammering the node (a host key mismatch
 * is logged once per attempt, not in a loop).
 *
 * Reloading routes (`bind` then `retainOnly`) keeps the connections of unchanged nodes; nodes no
 * route uses any more close once their last channel has.
 */
export class SshNodePool {
  private readonly logger = new Logger('SshNodes');
  private readonly nodes = new Map<string, SshNode>();
  private metrics: { handshakes: Counter<'node' | 'result'> } | undefined;

  /**
   * Dialers for `routes`' ssh routes (by route name). `routes` are all the ssh routes of one routes
   * file: a route's `through` names one of them (checked by the routes file's schema).
   */
  bind(routes: readonly SshRouteSpec[]): Map<string, Dialer> {
    const byName = new Map(routes.map((route) => [route.name, route]));
    const dialers = new Map<string, Dialer>();
    for (const route of routes) {
      const node = this.nodeFor(route, byName);
      dialers.set(route.name, (destination, timeoutMs) => node.open(destination, route.mode, Date.now() + timeoutMs));
    }
    return dialers;
  }

  /** Retires nodes that none of `routes` uses: each closes once its last channel has. */
  retainOnly(routes: readonly Route[]): void {
    const byName = new Map<string, SshRouteSpec>();
    for (const route of routes) {
      const { via } = route;
      if (via.kind === 'ssh' && via.node.key !== undefined) {
        byName.set(route.name, { name: route.name, node: { ...via.node, key: via.node.key }, mode: via.mode });
      }
    }
    const kept = new Set<string>();
    const keep = (route: SshRouteSpec): void => {
      kept.add(identityOf(route, byName));
      const through = route.node.through === undefined ? undefined : byName.get(route.node.through);
      if (through) {
        keep(through);
      }
    };
    byName.forEach(keep);
    for (const [identity, node] of this.nodes) {
      if (!kept.has(identity)) {
        this.nodes.delete(identity);
        node.retire();
      }
    }
  }

  /** Closes every node connection (graceful shutdown: sessions have ended or are being ended). */
  close(): void {
    const connected = [...this.nodes.values()].filter((node) => node.connected).length;
    for (const node of this.nodes.values()) {
      node.retire(true);
    }
    this.nodes.clear();
    if (connected > 0) {
      this.logger.log({ nodes: connected }, 'ssh proxy node connections closed');
    }
  }

  /** Adds the nodes' metrics to `registry` (label `node`: the route name that first used it, never an address). */
  registerMetrics(registry: Registry): void {
    const nodes = (): SshNode[] => [...this.nodes.values()];
    new Gauge({
      name: 'keyhole_proxy_ssh_node_connections',
      help: 'SSH connections to proxy nodes that are up (1) or not (0), by node',
      labelNames: ['node'],
      registers: [registry],
      collect() {
        this.reset();
        for (const node of nodes()) {
          this.set({ node: node.name }, node.connected ? 1 : 0);
        }
      },
    });
    new Gauge({
      name: 'keyhole_proxy_ssh_node_channels',
      help: 'Channels (consoles, and hops to chained nodes) open on each proxy node connection',
      labelNames: ['node'],
      registers: [registry],
      collect() {
        this.reset();
        for (const node of nodes()) {
          this.set({ node: node.name }, node.channelCount);
        }
      },
    });
    this.metrics = {
      handshakes: new Counter({
        name: 'keyhole_proxy_ssh_node_handshakes_total',
        help: 'SSH handshakes with proxy nodes, by node and result (ok, unreachable, auth_failed, host_key_mismatch, timeout)',
        labelNames: ['node', 'result'],
        registers: [registry],
      }),
    };
  }

  private nodeFor(route: SshRouteSpec, byName: ReadonlyMap<string, SshRouteSpec>): SshNode {
    const identity = identityOf(route, byName);
    let node = this.nodes.get(identity);
    if (node === undefined) {
      const through = route.node.through === undefined ? undefined : byName.get(route.node.through);
      const hop = through === undefined ? undefined : { node: this.nodeFor(through, byName), mode: through.mode };
      node = new SshNode(route.name, route.node, hop, this.logger, (result) => this.metrics?.handshakes.inc({ node: route.name, result }));
      this.nodes.set(identity, node);
    }
    return node;
  }
}

/** What makes two routes share a node connection: everything that decides where and as whom it logs in. */
function identityOf(route: SshRouteSpec, byName: ReadonlyMap<string, SshRouteSpec>, seen = new Set<string>()): string {
  const { node } = route;
  const through = node.through === undefined || seen.has(route.name) ? undefined : byName.get(node.through);
  seen.add(route.name);
  return createHash('sha256')
    .update(
      JSON.stringify([
        node.host,
        node.port,
        node.user,
        node.key.digest,
        node.hostKey,
        through === undefined ? null : [identityOf(through, byName, seen), through.mode],
      ]),
    )
    .digest('hex');
}

type HandshakeResult = 'ok' | 'unreachable' | 'auth_failed' | 'host_key_mismatch' | 'timeout';

class SshNode {
  private client: Client | undefined;
  private connecting: Promise<Client> | undefined;
  private failures = 0;
  private retryAtMs = 0;
  private lastFailure: UpstreamError | undefined;
  private channels = 0;
  private retired = false;

  constructor(
    /** The route name that first used this node: logs and metrics. */
    readonly name: string,
    private readonly spec: DialableNodeSpec,
    private readonly hop: { node: SshNode; mode: SshVia['mode'] } | undefined,
    private readonly logger: Logger,
    private readonly counted: (result: HandshakeResult) => void,
  ) {}

  get connected(): boolean {
    return this.client !== undefined;
  }

  get channelCount(): number {
    return this.channels;
  }

  /** A channel to `destination` through this node, within `deadlineMs` (Date.now() time). */
  async open(destination: { host: string; port: number }, mode: SshVia['mode'], deadlineMs: number): Promise<Duplex> {
    if (this.retired && this.client === undefined) {
      // A connect decided by routes that a reload has replaced: this node is not to be connected again.
      throw new UpstreamError('ssh node unreachable', 'the route of this proxy node was changed or removed');
    }
    let client = await this.ready(deadlineMs);
    let channel: ClientChannel;
    try {
      channel = await withDeadline(openChannel(client, destination, mode), deadlineMs, (late) => late.destroy(), 'ssh channel');
    } catch (error) {
      // The connection went away under this open (the node restarted and its close arrived just now):
      // one new connection is worth a try within the same deadline.
      if (this.client === client || Date.now() >= deadlineMs) {
        throw error;
      }
      client = await this.ready(deadlineMs);
      channel = await withDeadline(openChannel(client, destination, mode), deadlineMs, (late) => late.destroy(), 'ssh channel');
    }
    this.channels++;
    channel.once('close', () => {
      this.channels--;
      if (this.retired && this.channels === 0) {
        this.end();
      }
    });
    return channel;
  }

  /** No new route uses this node: close it now (`now`) or once its last channel has. */
  retire(now = false): void {
    this.retired = true;
    if (now || this.channels === 0) {
      this.end();
    }
  }

  private end(): void {
    const client = this.client;
    this.client = undefined;
    client?.end();
  }

  private async ready(deadlineMs: number): Promise<Client> {
    if (this.client !== undefined) {
      return this.client;
    }
    if (this.connecting === undefined && Date.now() < this.retryAtMs && this.lastFailure !== undefined) {
      // In the backoff after a failure: wait for its end if the deadline allows (the node may be back
      // by then), else fail now. Either way every waiter shares the one next attempt.
      if (this.retryAtMs >= deadlineMs) {
        throw new UpstreamError(this.lastFailure.reason, `${this.lastFailure.message} (a retry waits for a backoff)`);
      }
      await delay(this.retryAtMs - Date.now());
      return this.ready(deadlineMs);
    }
    if (this.connecting === undefined) {
      this.connecting = this.handshake().then(
        (client) => {
          this.failures = 0;
          this.lastFailure = undefined;
          this.connecting = undefined;
          if (this.retired) {
            client.end();
          } else {
            this.client = client;
          }
          return client;
        },
        (error: UpstreamError) => {
          this.failures++;
          this.lastFailure = error;
          this.retryAtMs = Date.now() + Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** (this.failures - 1));
          this.connecting = undefined;
          throw error;
        },
      );
    }
    return withDeadline(this.connecting, deadlineMs, () => undefined, 'ssh handshake with the proxy node');
  }

  private async handshake(): Promise<Client> {
    const { spec } = this;
    // A chained node's TCP connection is a channel through the node before it.
    const sock = this.hop
      ? await this.hop.node.open({ host: spec.host, port: spec.port }, this.hop.mode, Date.now() + HANDSHAKE_TIMEOUT_MS)
      : undefined;
    const client = new Client();
    return new Promise<Client>((resolve, reject) => {
      let presented: string | undefined;
      let settled = false;
      const fail = (result: HandshakeResult, error: UpstreamError): void => {
        if (!settled) {
          settled = true;
          this.counted(result);
          this.logger.warn({ node: this.name, reason: error.reason, detail: error.message }, 'ssh proxy node connection failed');
          client.end();
          sock?.destroy();
          reject(error);
        }
      };
      client.once('ready', () => {
        settled = true;
        // Our packets (channel opens, console input) go out at once, not after sshd's delayed ACK of
        // the one before. A no-op when the connection is a channel through another node.
        client.setNoDelay(true);
        this.counted('ok');
        this.logger.log({ node: this.name }, 'ssh proxy node connected');
        resolve(client);
      });
      client.on('error', (error: Error & { level?: string; code?: string }) => {
        if (presented !== undefined) {
          fail(
            'host_key_mismatch',
            new UpstreamError('ssh host key mismatch', 'the proxy node presented another host key than the pinned one'),
          );
        } else if (error.level === 'client-authentication') {
          fail('auth_failed', new UpstreamError('ssh auth failed', 'the proxy node refused the key', { cause: error }));
        } else if (error.level === 'client-timeout') {
          fail('timeout', new UpstreamError('connect timeout', `no SSH handshake with the proxy node within ${HANDSHAKE_TIMEOUT_MS} ms`));
        } else if (!settled) {
          fail(
            'unreachable',
            new UpstreamError('ssh node unreachable', `ssh proxy node: ${error.code ?? error.message}`, { cause: error }),
          );
        } else {
          this.logger.warn({ node: this.name, detail: error.code ?? error.message }, 'ssh proxy node connection error');
        }
      });
      client.once('close', () => {
        fail('unreachable', new UpstreamError('ssh node unreachable', 'the proxy node closed the connection during the handshake'));
        if (this.client === client) {
          this.client = undefined;
          this.logger.warn({ node: this.name }, 'ssh proxy node connection closed: the next console connect reconnects');
        }
        sock?.destroy();
      });
      try {
        client.connect({
          host: spec.host,
          port: spec.port,
          username: spec.user,
          ...spec.key.material(),
          sock,
          readyTimeout: HANDSHAKE_TIMEOUT_MS,
          keepaliveInterval: KEEPALIVE_INTERVAL_MS,
          keepaliveCountMax: KEEPALIVE_COUNT_MAX,
          hostVerifier: (key: Buffer) => {
            const fingerprint = `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
            if (sameText(fingerprint, spec.hostKey)) {
              return true;
            }
            presented = fingerprint;
            // Both fingerprints are public: they tell the operator which key to pin or which node is an impostor.
            this.logger.error(
              { node: this.name, pinned: spec.hostKey, presented: fingerprint },
              'ssh proxy node host key mismatch: connection refused',
            );
            return false;
          },
        });
      } catch (error) {
        fail('unreachable', new UpstreamError('ssh node unreachable', 'ssh proxy node: cannot connect', { cause: error }));
      }
    });
  }
}

function openChannel(client: Client, destination: { host: string; port: number }, mode: SshVia['mode']): Promise<ClientChannel> {
  return new Promise((resolve, reject) => {
    const done = (error: (Error & { reason?: number }) | undefined, channel: ClientChannel): void => {
      if (error) {
        // Reason 2 is SSH_OPEN_CONNECT_FAILED: the node could not reach the console.
        reject(
          error.reason === 2
            ? new UpstreamError('connect refused', 'the proxy node could not connect to the console', { cause: error })
            : new UpstreamError('ssh channel refused', `the proxy node refused the channel (${error.message})`, { cause: error }),
        );
      } else {
        ackNow(client, channel);
        resolve(channel);
      }
    };
    switch (mode) {
      case 'forward':
        client.forwardOut('127.0.0.1', 0, destination.host, destination.port, done);
        return;
      case 'nc': {
        const command = ncCommand(destination);
        if (command === undefined) {
          reject(new UpstreamError('ssh channel refused', 'the console address cannot be passed to nc'));
          return;
        }
        client.exec(command, (error, channel) => {
          // nc speaks on stderr only when it fails; unread, it would hold the channel's window.
          channel?.stderr.resume();
          done(error, channel);
        });
        return;
      }
    }
  });
}

/** The part of ssh2's connection that `ackNow` writes to (not in its public API). */
interface SshWire {
  _protocol?: { channelWindowAdjust?: (remoteChannel: number, bytes: number) => void };
}

/**
 * Sends sshd, right away, a packet that changes nothing (a window adjust of 0 bytes), so that our
 * ACK of what it just sent (the channel's confirmation, or nc's exec reply) leaves now instead of
 * after Linux's 40 ms delayed ACK. OpenSSH's sshd turns Nagle off only for interactive sessions, so
 * on a node connection it holds the console's first bytes (RFB's greeting) until its previous
 * packet is acknowledged: without this every console connect waits ~40 ms for our delayed ACK.
 */
function ackNow(client: Client, channel: ClientChannel): void {
  const protocol = (client as unknown as SshWire)._protocol;
  const remote = (channel as unknown as { outgoing?: { id?: unknown } }).outgoing?.id;
  if (typeof protocol?.channelWindowAdjust === 'function' && typeof remote === 'number') {
    protocol.channelWindowAdjust(remote, 0);
  }
}

/**
 * `nc -N 'HOST' PORT` for the node's shell. HOST comes from a token row (possibly written by Nova),
 * so it must be an IP address or a host name (no shell metacharacters can pass either), and is
 * quoted anyway. `-N` passes the console's end of input on (shutdown after EOF), so that nc exits
 * when the session ends instead of lingering on the node.
 */
export function ncCommand(destination: { host: string; port: number }): string | undefined {
  const { host, port } = destination;
  if ((isIP(host) === 0 && !isHostname(host)) || host.startsWith('-') || !Number.isInteger(port) || port < 1 || port > 65535) {
    return undefined;
  }
  return `nc -N '${host}' ${port}`;
}

/** `promise`, or an UpstreamError at `deadlineMs`; what it resolves to later is handed to `late`. */
function withDeadline<T>(promise: Promise<T>, deadlineMs: number, late: (value: T) => void, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let timedOut = false;
    const timer = setTimeout(
      () => {
        timedOut = true;
        reject(new UpstreamError('connect timeout', `no ${what} within the connect timeout`));
      },
      Math.max(1, deadlineMs - Date.now()),
    );
    promise.then(
      (value) => {
        clearTimeout(timer);
        if (timedOut) {
          late(value);
        } else {
          resolve(value);
        }
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(
          error instanceof UpstreamError ? error : new UpstreamError('ssh node unreachable', 'ssh proxy node failed', { cause: error }),
        );
      },
    );
  });
}

function sameText(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}
