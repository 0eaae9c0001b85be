import { CredentialsService } from '@keyhole/credentials';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { startRedisServer, TestRedisServer } from '../support/redis-server';
import { Teardown } from '../support/teardown';
import { call } from '../support/token-api';
import { startTokenApiProcess, TokenApiProcess } from '../support/token-api-process';
import { waitUntil } from '../support/wait';
import { ApiResponse, expectError, keyParts, randomSecret } from './helpers';

/*
 * Guessing API keys, as an attacker would, against real token API processes: failures are limited
 * per key id and per client address (429 with Retry-After, before any argon2 work), unknown and
 * revoked ids cost what a wrong secret costs, argon2 work is capped and served fairly, and the
 * limits are shared by two replicas through Redis or PostgreSQL. Clients are told apart by their
 * real source address (127.0.0.0/8); keys are hashed with the production argon2 cost.
 */

jest.setTimeout(180_000);

/** The production argon2 cost (OWASP's), so that timings mean what they mean in production. */
const PRODUCTION_ARGON2 = { KEYHOLE_ARGON2_MEMORY_KIB: '19456', KEYHOLE_ARGON2_TIME_COST: '2', KEYHOLE_ARGON2_PARALLELISM: '1' };
const UNLIMITED = { KEYHOLE_AUTH_FAILURES_PER_KEY: '1000000', KEYHOLE_AUTH_FAILURES_PER_ADDRESS: '1000000' };

describe('API key authentication throttling', () => {
  const teardown = new Teardown();
  let deployment: TestDeployment;

  beforeAll(async () => {
    deployment = teardown.add(await startTestDeployment({ environment: PRODUCTION_ARGON2 }), (running) => running.stop());
  });

  afterAll(() => teardown.stopAll());

  /** A fresh operator key, never presented to any API process yet (nothing cached). */
  async function newKey(): Promise<string> {
    const created = await deployment.api.app.get(CredentialsService).create({ name: 'throttle-test', role: 'operator', cellName: null });
    return created.key;
  }

  function wrongSecretFor(key: string): string {
    return `khk_${keyParts(key).id}_${randomSecret()}`;
  }

  function unknownKey(): string {
    return `khk_${Math.floor(Math.random() * 2 ** 48)
      .toString(16)
      .padStart(16, '0')}_${randomSecret()}`;
  }

  function startApi(environment: Record<string, string>): Promise<TokenApiProcess> {
    return startTokenApiProcess({ KEYHOLE_DATABASE_URL: deployment.controlUrl, ...PRODUCTION_ARGON2, ...environment }).then((api) =>
      teardown.add(api),
    );
  }

  /** GET /v1/cells with `key` from `from`: 200 for a good operator key. */
  const listCells = (api: TokenApiProcess, key: string, from: string): Promise<ApiResponse> =>
    call(api.baseUrl, 'GET', '/v1/cells', { key, from });

  function expectThrottled(response: ApiResponse, windowSeconds: number): void {
    expectError(response, 429, 'TOO_MANY_REQUESTS');
    const retryAfter = Number(response.headers.get('retry-after'));
    expect(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= windowSeconds).toBe(true);
    expect(response.headers.get('cache-control')).toBe('no-store');
  }

  describe('limits on failures (5 per key id, 8 per address, per minute)', () => {
    let api: TokenApiProcess;

    beforeAll(async () => {
      api = await startApi({
        KEYHOLE_AUTH_FAILURES_PER_KEY: '5',
        KEYHOLE_AUTH_FAILURES_PER_ADDRESS: '8',
        KEYHOLE_ARGON2_CONCURRENCY: '1',
        KEYHOLE_ARGON2_QUEUE: '2',
      });
    });

    it('refuses a key id after 5 wrong secrets with 429 and Retry-After, fast, while its owner keeps working from the cache', async () => {
      const owner = await newKey();
      const lockedOut = await newKey();
      expect((await listCells(api, owner, '127.0.0.1')).status).toBe(200);
      // Wrong secrets for both ids, each from an address of its own (the per-address limit is not what is tested).
      for (const [index, key] of [owner, lockedOut].entries()) {
        for (let attempt = 0; attempt < 5; attempt += 1) {
          expectError(await listCells(api, wrongSecretFor(key), `127.0.1.${index * 10 + attempt + 1}`), 401, 'UNAUTHENTICATED');
        }
      }
      const started = performance.now();
      const refused = await listCells(api, wrongSecretFor(owner), '127.0.1.99');
      const refusedMs = performance.now() - started;
      expectThrottled(refused, 60);
      // The owner's key, verified before the attack, is still admitted (its cached verification needs no argon2).
      expect((await listCells(api, owner, '127.0.0.1')).status).toBe(200);
      // A key never verified on this process is refused while its id is locked out, even with the right secret:
      // verifying it would give a guesser unlimited attempts.
      expectThrottled(await listCells(api, lockedOut, '127.0.0.1'), 60);
      // A key id nobody attacked is not concerned.
      expect((await listCells(api, await newKey(), '127.0.0.1')).status).toBe(200);
      const metrics = await scrapeMetrics(api.baseUrl);
      expect(metricValue(metrics, 'keyhole_api_auth_refusals_total', { reason: 'rate_limited_key' })).toBe(2);
      expect(metricValue(metrics, 'keyhole_api_auth_refusals_total', { reason: 'bad_key' })).toBe(10);
      console.info(`throttling: a refused (429) attempt took ${refusedMs.toFixed(1)} ms`);
    });

    it('refuses an address after 8 failures across key ids, and only that address', async () => {
      for (let attempt = 0; attempt < 8; attempt += 1) {
        expectError(await listCells(api, unknownKey(), '127.0.2.1'), 401, 'UNAUTHENTICATED');
      }
      expectThrottled(await listCells(api, unknownKey(), '127.0.2.1'), 60);
      // A good key that this process never verified, from that address, is refused too (it would cost argon2).
      expectThrottled(await listCells(api, await newKey(), '127.0.2.1'), 60);
      expectError(await listCells(api, unknownKey(), '127.0.2.2'), 401, 'UNAUTHENTICATED');
      expect((await listCells(api, await newKey(), '127.0.2.2')).status).toBe(200);
      const metrics = await scrapeMetrics(api.baseUrl);
      expect(metricValue(metrics, 'keyhole_api_auth_refusals_total', { reason: 'rate_limited_address' })).toBe(2);
    });

    it('admits a new key presented by 40 requests at once (a client opening its connections), with one verification', async () => {
      const key = await newKey();
      const verificationsBefore = metricValue(await scrapeMetrics(api.baseUrl), 'keyhole_api_argon2_verifications_total') ?? 0;
      const answers = await Promise.all(Array.from({ length: 40 }, () => listCells(api, key, '127.0.2.50')));
      expect(answers.map((answer) => answer.status)).toEqual(Array.from({ length: 40 }, () => 200));
      expect(metricValue(await scrapeMetrics(api.baseUrl), 'keyhole_api_argon2_verifications_total')).toBe(verificationsBefore + 1);
    });

    it('answers 503 AUTHENTICATION_BUSY at once when more verifications wait than the queue holds', async () => {
      // 12 at once from 12 addresses (each within its limits): 1 runs, 2 wait, the others are refused at once.
      const answers = await Promise.all(Array.from({ length: 12 }, (_, index) => listCells(api, unknownKey(), `127.0.3.${index + 1}`)));
      const busy = answers.filter((answer) => answer.status === 503);
      expect(busy.length).toBeGreaterThanOrEqual(1);
      for (const answer of busy) {
        expectError(answer, 503, 'AUTHENTICATION_BUSY');
        expect(answer.headers.get('retry-after')).toBe('1');
      }
      for (const answer of answers.filter((each) => each.status !== 503)) {
        expectError(answer, 401, 'UNAUTHENTICATED');
      }
      const metrics = await scrapeMetrics(api.baseUrl);
      expect(metricValue(metrics, 'keyhole_api_auth_refusals_total', { reason: 'argon2_busy' })).toBe(busy.length);
      expect(metricValue(metrics, 'keyhole_api_argon2_in_flight')).toBe(0);
      expect(metricValue(metrics, 'keyhole_api_argon2_queued')).toBe(0);
      console.info(`throttling: ${busy.length} of 12 simultaneous verifications refused as busy (concurrency 1, queue 2)`);
    });
  });

  describe('client addresses behind a trusted front proxy (3 failures per address)', () => {
    let api: TokenApiProcess;

    beforeAll(async () => {
      api = await startApi({ KEYHOLE_AUTH_FAILURES_PER_ADDRESS: '3', KEYHOLE_TRUSTED_PROXIES: '127.0.0.1' });
    });

    const fromBehindProxy = (client: string, from: string) =>
      call(api.baseUrl, 'GET', '/v1/cells', { key: unknownKey(), from, headers: { 'x-forwarded-for': client } });

    it('counts each client the trusted proxy forwards for, and ignores X-Forwarded-For from anyone else', async () => {
      for (let attempt = 0; attempt < 3; attempt += 1) {
        expectError(await fromBehindProxy('198.51.100.1', '127.0.0.1'), 401, 'UNAUTHENTICATED');
      }
      expectThrottled(await fromBehindProxy('198.51.100.1', '127.0.0.1'), 60);
      expectError(await fromBehindProxy('198.51.100.2', '127.0.0.1'), 401, 'UNAUTHENTICATED');
      // An untrusted peer cannot escape its limit by naming a new client in each request.
      for (let attempt = 0; attempt < 3; attempt += 1) {
        expectError(await fromBehindProxy(`203.0.113.${attempt + 1}`, '127.0.8.1'), 401, 'UNAUTHENTICATED');
      }
      expectThrottled(await fromBehindProxy('203.0.113.99', '127.0.8.1'), 60);
    });
  });

  describe('cost of a refusal and fairness under a flood (no failure limits, one argon2 at a time)', () => {
    let api: TokenApiProcess;
    let wrongSecretMedianMs: number;

    beforeAll(async () => {
      api = await startApi({ ...UNLIMITED, KEYHOLE_ARGON2_CONCURRENCY: '1', KEYHOLE_ARGON2_QUEUE: '1000' });
    });

    it('takes as long to refuse an unknown or revoked key id as a wrong secret for a live one', async () => {
      const live = await newKey();
      const revoked = await newKey();
      await deployment.api.app.get(CredentialsService).revoke(keyParts(revoked).id);
      const kinds = {
        wrongSecret: () => wrongSecretFor(live),
        unknownId: () => unknownKey(),
        revokedId: () => wrongSecretFor(revoked),
      };
      const samples: Record<keyof typeof kinds, number[]> = { wrongSecret: [], unknownId: [], revokedId: [] };
      // Interleaved in a random order each round, so that the machine's load drifts over all kinds
      // alike and no kind always follows another; the first round warms up.
      for (let round = 0; round <= 30; round += 1) {
        const order = (Object.keys(kinds) as (keyof typeof kinds)[]).sort(() => Math.random() - 0.5);
        for (const kind of order) {
          const started = performance.now();
          const answer = await listCells(api, kinds[kind](), '127.0.4.1');
          const elapsed = performance.now() - started;
          expectError(answer, 401, 'UNAUTHENTICATED');
          if (round > 0) {
            samples[kind].push(elapsed);
          }
        }
      }
      const medians = Object.fromEntries(Object.entries(samples).map(([kind, values]) => [kind, median(values)])) as Record<
        keyof typeof kinds,
        number
      >;
      wrongSecretMedianMs = medians.wrongSecret;
      console.info(
        `throttling: median refusal times over 30 each: wrong secret ${medians.wrongSecret.toFixed(1)} ms, ` +
          `unknown id ${medians.unknownId.toFixed(1)} ms, revoked id ${medians.revokedId.toFixed(1)} ms`,
      );
      for (const kind of ['unknownId', 'revokedId'] as const) {
        const ratio = medians[kind] / medians.wrongSecret;
        expect({ kind, ratioWithinTolerance: ratio >= 0.7 && ratio <= 1.4 }).toEqual({ kind, ratioWithinTolerance: true });
      }
    });

    it("serves a new key's first request within a few verifications while one client floods wrong secrets", async () => {
      expect(wrongSecretMedianMs).toBeGreaterThan(0);
      const inFlight = 24;
      let flooding = true;
      let floodAnswers = 0;
      const flooder = async (): Promise<void> => {
        while (flooding) {
          await listCells(api, unknownKey(), '127.0.5.1');
          floodAnswers += 1;
        }
      };
      const floods = Array.from({ length: inFlight }, () => flooder());
      try {
        // The flood has filled the queue: without fairness a newcomer would wait for all of it.
        const queuedDuringFlood = await waitUntil(
          async () => {
            const queued = metricValue(await scrapeMetrics(api.baseUrl), 'keyhole_api_argon2_queued') ?? 0;
            return queued >= inFlight / 2 ? queued : undefined;
          },
          10_000,
          'the flood to fill the argon2 queue',
        );
        const firstRequestMs: number[] = [];
        for (let newcomer = 0; newcomer < 3; newcomer += 1) {
          const key = await newKey();
          const started = performance.now();
          const answer = await listCells(api, key, `127.0.5.${newcomer + 2}`);
          firstRequestMs.push(performance.now() - started);
          expect(answer.status).toBe(200);
        }
        const slowest = Math.max(...firstRequestMs);
        console.info(
          `throttling: with ${queuedDuringFlood} flood verifications queued (one verification ~${wrongSecretMedianMs.toFixed(1)} ms), ` +
            `new keys' first requests took ${firstRequestMs.map((ms) => ms.toFixed(1)).join(', ')} ms ` +
            `(a first-come queue would make them wait ~${(queuedDuringFlood * wrongSecretMedianMs).toFixed(0)} ms)`,
        );
        // Round robin: the current verification, one of the flooder's, then the newcomer's (plus HTTP and the database).
        expect(slowest).toBeLessThan(Math.max(8 * wrongSecretMedianMs, 150));
        expect(slowest).toBeLessThan((queuedDuringFlood * wrongSecretMedianMs) / 2);
      } finally {
        flooding = false;
        await Promise.all(floods);
      }
      expect(floodAnswers).toBeGreaterThan(inFlight);
    });
  });

  describe.each(['redis', 'postgres'] as const)('failure counts shared by two replicas (%s)', (store) => {
    let redis: TestRedisServer | undefined;
    let first: TokenApiProcess;
    let second: TokenApiProcess;

    beforeAll(async () => {
      const environment: Record<string, string> = {
        KEYHOLE_AUTH_LIMITER: store,
        KEYHOLE_AUTH_FAILURES_PER_KEY: '6',
        KEYHOLE_AUTH_FAILURES_PER_ADDRESS: '1000',
      };
      if (store === 'redis') {
        redis = teardown.add(await startRedisServer());
        environment.KEYHOLE_AUTH_LIMITER_REDIS_URL = redis.url;
      }
      [first, second] = await Promise.all([startApi(environment), startApi(environment)]);
    });

    it('limits a key id across both replicas: 3 failures on each, then both refuse', async () => {
      const key = await newKey();
      for (const api of [first, second]) {
        for (let attempt = 0; attempt < 3; attempt += 1) {
          expectError(await listCells(api, wrongSecretFor(key), '127.0.6.1'), 401, 'UNAUTHENTICATED');
        }
      }
      expectThrottled(await listCells(first, wrongSecretFor(key), '127.0.6.1'), 60);
      expectThrottled(await listCells(second, key, '127.0.6.2'), 60);
      // Successes are not failures: another key verified on both replicas many times is never refused.
      const busy = await newKey();
      for (let attempt = 0; attempt < 4; attempt += 1) {
        expect((await listCells(attempt % 2 === 0 ? first : second, busy, '127.0.6.3')).status).toBe(200);
      }
    });

    if (store === 'redis') {
      it('keeps limiting, per replica, and keeps admitting good keys while Redis is down; warns and counts it', async () => {
        await (redis as TestRedisServer).kill();
        const good = await newKey();
        expect((await listCells(first, good, '127.0.7.1')).status).toBe(200);
        const attacked = await newKey();
        for (let attempt = 0; attempt < 6; attempt += 1) {
          expectError(await listCells(first, wrongSecretFor(attacked), '127.0.7.2'), 401, 'UNAUTHENTICATED');
        }
        expectThrottled(await listCells(first, wrongSecretFor(attacked), '127.0.7.2'), 60);
        expect(metricValue(await scrapeMetrics(first.baseUrl), 'keyhole_api_auth_limiter_fallbacks_total')).toBeGreaterThan(0);
        expect(first.process.output()).toContain('authentication failure store unreachable');
        // Back: counting is shared again once Redis answers.
        await (redis as TestRedisServer).restart();
        await waitUntil(
          async () => {
            await listCells(first, unknownKey(), '127.0.7.3');
            return first.process.output().includes('authentication failure store answers again') || undefined;
          },
          15_000,
          'the API to count in Redis again',
          { intervalMs: 250 },
        );
      });
    }
  });
});

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}
