import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Redis } from 'ioredis';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { ProxyProcess, startProxyProcess } from '../support/proxy-process';
import { startRedisServer, TestRedisServer } from '../support/redis-server';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { stopAfterTests, Teardown } from '../support/teardown';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';
import { connectConsole, expectRefusedUpgrade } from '../support/websocket-client';

/*
 * The legacy fallback under load while its Redis fails: a console proxy process of cell1 with the
 * fallback forced on, clients that keep opening consoles with database tokens and with legacy
 * (Nova consoleauth) tokens, and the test's own redis-server frozen (SIGSTOP), resumed, killed and
 * restarted under them. Database tokens never notice; legacy tokens fail closed (503) within about
 * the legacy timeout, never hang, and work again once Redis answers, without restarting keyhole.
 */

jest.setTimeout(90_000);

/** The proxy's KEYHOLE_LEGACY_TIMEOUT_MS. */
const LEGACY_TIMEOUT_MS = 250;
/** Clients of each kind opening consoles one after the other. */
const CLIENTS_PER_KIND = 2;
/** How long each phase runs its load. */
const PHASE_MS = 1_500;
/** No connect may take longer than this, whatever Redis does (a hang would). */
const CONNECT_TIMEOUT_MS = 5_000;

type Kind = 'database' | 'legacy';
type Phase = 'healthy' | 'frozen' | 'resumed' | 'killed' | 'restarted';

interface Attempt {
  phase: Phase;
  kind: Kind;
  /** `ok` (opened, echoed, closed), the status of a refused upgrade, or the error. */
  outcome: number | string;
  connectMs: number;
}

const teardown = new Teardown();
let redis: TestRedisServer;
let raw: Redis;
let deployment: TestDeployment;
let upstream: TcpUpstream;
let proxy: ProxyProcess;
const databaseTokens: string[] = [];
const legacyTokens: string[] = [];

/** A token as Nova consoleauth stored it: the raw token as key, its authorization as JSON, a TTL. */
async function writeLegacyToken(token: string): Promise<void> {
  const value = {
    token,
    instance_uuid: randomUUID(),
    console_type: 'novnc',
    host: '127.0.0.1',
    port: upstream.port,
    internal_access_path: null,
    access_url: `http://cell1.console.test:6080/vnc_auto.html?path=%3Ftoken%3D${token}`,
    last_activity_at: Date.now() / 1000,
  };
  await raw.set(token, JSON.stringify(value), 'EX', 600);
}

function consoleUrl(token: string): string {
  return `${proxy.wsBase}/websockify?token=${encodeURIComponent(token)}`;
}

/** Opens a console, echoes through it and closes it; what happened and how long the open took. */
async function useConsole(token: string): Promise<{ outcome: Attempt['outcome']; connectMs: number }> {
  const started = performance.now();
  try {
    const client = await connectConsole(consoleUrl(token), { protocols: ['binary'], timeoutMs: CONNECT_TIMEOUT_MS });
    const connectMs = performance.now() - started;
    const echoed = (await client.roundTrip('load')).toString();
    await client.close();
    return { outcome: echoed === 'load' ? 'ok' : `echoed ${JSON.stringify(echoed)}`, connectMs };
  } catch (error) {
    const refused = /upgrade refused with HTTP (\d+)/.exec(String(error));
    return { outcome: refused ? Number(refused[1]) : String(error), connectMs: performance.now() - started };
  }
}

/**
 * Clients that open consoles until stopped, each attempt labelled with the phase it started in.
 * Between phases the load pauses (`switchTo`) until every attempt of the last phase has ended,
 * so that no attempt straddles a fault.
 */
class Load {
  readonly attempts: Attempt[] = [];
  private phase: Phase | 'switching' = 'healthy';
  private inFlight = 0;
  private stopped = false;
  private readonly clients: Promise<void>[] = [];

  start(): void {
    for (const kind of ['database', 'legacy'] as const) {
      for (let client = 0; client < CLIENTS_PER_KIND; client += 1) {
        this.clients.push(this.run(kind, client));
      }
    }
  }

  private async run(kind: Kind, client: number): Promise<void> {
    const tokens = kind === 'database' ? databaseTokens : legacyTokens;
    for (let round = 0; !this.stopped; round += 1) {
      const phase = this.phase;
      if (phase === 'switching') {
        await new Promise((resolve) => setTimeout(resolve, 10));
        continue;
      }
      this.inFlight += 1;
      const { outcome, connectMs } = await useConsole(tokens[(client + round) % tokens.length]);
      this.inFlight -= 1;
      this.attempts.push({ phase, kind, outcome, connectMs });
    }
  }

  /** Lets the current phase's attempts end, runs `fault`, then starts `next`. */
  async switchTo(next: Phase, fault: () => Promise<void> | void = () => undefined): Promise<void> {
    this.phase = 'switching';
    await waitUntil(() => (this.inFlight === 0 ? true : undefined), CONNECT_TIMEOUT_MS + 1_000, 'the attempts of the phase to end', {
      intervalMs: 5,
    });
    await fault();
    this.phase = next;
  }

  /** Runs the current phase for `ms`. */
  async hold(ms: number): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, ms));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.all(this.clients);
  }

  of(phase: Phase, kind: Kind): Attempt[] {
    return this.attempts.filter((attempt) => attempt.phase === phase && attempt.kind === kind);
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** The outcomes of attempts with how many of each, for readable failures. */
function tally(attempts: Attempt[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const attempt of attempts) {
    counts[String(attempt.outcome)] = (counts[String(attempt.outcome)] ?? 0) + 1;
  }
  return counts;
}

beforeAll(async () => {
  redis = teardown.add(await startRedisServer());
  raw = redis.client();
  upstream = teardown.add(await startTcpUpstream(echo));
  deployment = teardown.add(await startTestDeployment(), (started) => started.stop());
  proxy = teardown.add(
    await startProxyProcess({
      KEYHOLE_CELL_NAME: 'cell1',
      KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
      KEYHOLE_LEGACY_REDIS_URL: redis.url,
      KEYHOLE_LEGACY_TIMEOUT_MS: String(LEGACY_TIMEOUT_MS),
      KEYHOLE_LEGACY_FALLBACK: 'on',
    }),
    async (started) => {
      await started.stop();
    },
  );
  for (let count = 0; count < 3; count += 1) {
    const issued = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: deployment.agentKeys.cell1,
      body: { instanceUuid: randomUUID(), consoleType: 'novnc', host: '127.0.0.1', port: upstream.port },
    });
    expect(issued.status).toBe(201);
    databaseTokens.push(issued.body.token);
    const legacy = randomUUID();
    await writeLegacyToken(legacy);
    legacyTokens.push(legacy);
  }
}, 60_000);

stopAfterTests(teardown);

it('keeps database tokens unaffected and legacy tokens failing closed, never hanging, while Redis is frozen, killed and restarted under load', async () => {
  const load = new Load();
  load.start();
  try {
    await load.hold(PHASE_MS);

    await load.switchTo('frozen', () => redis.pause());
    // One refusal read whole: the fail-closed answer is the documented 503 with the fixed body.
    const frozenRefusal = await expectRefusedUpgrade(consoleUrl(legacyTokens[0]));
    expect({ status: frozenRefusal.status, body: JSON.parse(frozenRefusal.body) }).toEqual({
      status: 503,
      body: { code: 'UNAVAILABLE', message: 'console authorization is unavailable' },
    });
    await load.hold(PHASE_MS);

    await load.switchTo('resumed', () => redis.resume());
    const resumedAt = performance.now();
    await waitUntil(
      () => (load.of('resumed', 'legacy').some((attempt) => attempt.outcome === 'ok') ? true : undefined),
      5_000,
      'a legacy token to be served again after Redis resumed',
    );
    const resumedWithinMs = performance.now() - resumedAt;
    await load.hold(500);

    await load.switchTo('killed', () => redis.kill());
    await load.hold(PHASE_MS);

    // Back on the same port, empty (nothing was saved): the legacy system writes its tokens again.
    await load.switchTo('restarted', async () => {
      await redis.restart();
      raw = redis.client();
      for (const token of legacyTokens) {
        await writeLegacyToken(token);
      }
    });
    const restartedAt = performance.now();
    await waitUntil(
      () => (load.of('restarted', 'legacy').some((attempt) => attempt.outcome === 'ok') ? true : undefined),
      5_000,
      'a legacy token to be served again after Redis restarted',
    );
    const restartedWithinMs = performance.now() - restartedAt;
    await load.hold(PHASE_MS);
    await load.stop();

    // Database tokens: served in every phase, as fast while Redis is frozen or dead as when it is well.
    const healthyMedian = median(load.of('healthy', 'database').map((attempt) => attempt.connectMs));
    for (const phase of ['healthy', 'frozen', 'resumed', 'killed', 'restarted'] as const) {
      const attempts = load.of(phase, 'database');
      expect({ phase, outcomes: tally(attempts) }).toEqual({ phase, outcomes: { ok: attempts.length } });
      expect(attempts.length).toBeGreaterThan(0);
      // Never waiting for Redis: the median stays well under the legacy timeout above the healthy one.
      expect({ phase, slower: median(attempts.map((attempt) => attempt.connectMs)) > healthyMedian + LEGACY_TIMEOUT_MS / 2 }).toEqual({
        phase,
        slower: false,
      });
      expect({ phase, slowest: Math.max(...attempts.map((attempt) => attempt.connectMs)) < 2_000 }).toEqual({ phase, slowest: true });
    }
    // Legacy tokens: served while Redis is well; refused 503 (fail closed) within about the timeout while it is not.
    expect(tally(load.of('healthy', 'legacy'))).toEqual({ ok: load.of('healthy', 'legacy').length });
    for (const phase of ['frozen', 'killed'] as const) {
      const attempts = load.of(phase, 'legacy');
      expect(attempts.length).toBeGreaterThan(0);
      expect({ phase, outcomes: tally(attempts) }).toEqual({ phase, outcomes: { 503: attempts.length } });
      // The timeout, plus room for a loaded machine: far from the hang of a client without one.
      expect({ phase, slowest: Math.max(...attempts.map((attempt) => attempt.connectMs)) < LEGACY_TIMEOUT_MS + 1_500 }).toEqual({
        phase,
        slowest: true,
      });
    }
    // Coming back: nothing but served or refused-unavailable on the way, and served within seconds.
    for (const phase of ['resumed', 'restarted'] as const) {
      const outcomes = Object.keys(tally(load.of(phase, 'legacy')));
      expect({ phase, outcomes: outcomes.filter((outcome) => outcome !== 'ok' && outcome !== '503') }).toEqual({ phase, outcomes: [] });
      expect(load.of(phase, 'legacy').at(-1)?.outcome).toBe('ok');
    }
    expect(resumedWithinMs).toBeLessThan(5_000);
    expect(restartedWithinMs).toBeLessThan(5_000);
  } finally {
    await load.stop();
    redis.resume();
  }

  // The same process served all of it, and wrote no token to its log.
  expect(proxy.child.exitCode).toBeNull();
  const output = proxy.output();
  expect([...databaseTokens, ...legacyTokens].filter((token) => output.includes(token))).toEqual([]);
});
