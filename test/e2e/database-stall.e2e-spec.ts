import { execFile } from 'node:child_process';
import WebSocket from 'ws';
import path from 'node:path';
import { CellsService } from '@keyhole/cells';
import { CredentialsService } from '@keyhole/credentials';
import { testConfig } from '../support/config';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { startPostgresServer, TestPostgresServer } from '../support/postgres-server';
import { ProxyProcess, startProxyProcess } from '../support/proxy-process';
import { startServices } from '../support/services';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { Teardown } from '../support/teardown';
import { call } from '../support/token-api';
import { startTokenApiProcess, TokenApiProcess } from '../support/token-api-process';
import { waitUntil, withDeadline } from '../support/wait';
import { expectError, issueBody } from './helpers';

/*
 * A PostgreSQL that stops answering without closing its connections (frozen with SIGSTOP, as a
 * partition or a full disk would leave it) or that dies outright, under the real token API and
 * console proxy processes and the CLI: every request ends within the client-side deadlines with a
 * 503 (or a clear CLI error), never hangs, and everything works again once the database answers,
 * without a restart. Deadlines are shortened through the configuration so that the file runs fast.
 */

/** KEYHOLE_DB_CONNECT_TIMEOUT_MS and KEYHOLE_DB_QUERY_TIMEOUT_MS of every process here. */
const DEADLINE_MS = 1_000;
/**
 * How long any request may take while the database is frozen: waiting for a connection and one
 * statement's deadline at most, plus scheduling on a busy two-core machine.
 */
const ANSWER_WITHIN_MS = 2 * DEADLINE_MS + 1_500;
const DEADLINES = {
  KEYHOLE_DB_CONNECT_TIMEOUT_MS: String(DEADLINE_MS),
  KEYHOLE_DB_QUERY_TIMEOUT_MS: String(DEADLINE_MS),
  KEYHOLE_DB_STATEMENT_TIMEOUT_MS: String(DEADLINE_MS - 200),
};
const CLI = path.resolve(__dirname, '../../dist/apps/cli/src/main.js');

interface Timed<T> {
  value: T;
  ms: number;
}

async function timed<T>(work: () => Promise<T>): Promise<Timed<T>> {
  const started = performance.now();
  const value = await work();
  return { value, ms: Math.round(performance.now() - started) };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Runs the built CLI as an operator would; killed (and reported as such) if it outlives `timeoutMs`. */
function keyhole(args: string[], environment: Record<string, string>, timeoutMs = 15_000): Promise<{ code: number | string; err: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, ...args],
      { env: { PATH: process.env.PATH, ...environment }, timeout: timeoutMs },
      (error, _stdout, stderr) => {
        resolve({ code: error ? (error.killed ? 'killed' : Number(error.code)) : 0, err: stderr });
      },
    );
  });
}

describe('a stalled or dead database never hangs a request', () => {
  const teardown = new Teardown();
  let database: TestPostgresServer;
  let api: TokenApiProcess;
  let proxy: ProxyProcess;
  let upstream: TcpUpstream;
  let agentKey: string;
  let operatorKey: string;
  let cliEnvironment: Record<string, string>;
  /** How long `keyhole tokens list` takes while the database answers (Node and Nest start first). */
  let cliBaselineMs = 0;
  const figures: string[] = [];

  beforeAll(async () => {
    database = teardown.add(await startPostgresServer());
    upstream = teardown.add(await startTcpUpstream(echo));
    // The cell and the keys, written as an operator's CLI would, before any keyhole process runs.
    const { app } = await startServices(testConfig(database.controlUrl));
    try {
      await app.get(CellsService).register({ name: 'cell1', databaseUrl: database.cellUrl, proxyUrl: 'http://cell1.console.test:6080' });
      agentKey = (await app.get(CredentialsService).create({ name: 'agent', role: 'agent', cellName: 'cell1' })).key;
      operatorKey = (await app.get(CredentialsService).create({ name: 'operator', role: 'operator', cellName: null })).key;
    } finally {
      await app.close();
    }
    api = teardown.add(
      await startTokenApiProcess({
        KEYHOLE_DATABASE_URL: database.controlUrl,
        KEYHOLE_DB_POOL_SIZE: '4',
        KEYHOLE_ARGON2_MEMORY_KIB: '64',
        KEYHOLE_ARGON2_TIME_COST: '1',
        KEYHOLE_ARGON2_PARALLELISM: '1',
        ...DEADLINES,
      }),
      (running) => running.close(),
    );
    proxy = teardown.add(
      await startProxyProcess({ KEYHOLE_CELL_NAME: 'cell1', KEYHOLE_CELL_DATABASE_URL: database.cellUrl, ...DEADLINES }),
      async (running) => {
        await running.stop('SIGKILL');
      },
    );
    cliEnvironment = { KEYHOLE_DATABASE_URL: database.controlUrl, KEYHOLE_LOG_LEVEL: 'error', ...DEADLINES };
  }, 90_000);

  afterEach(() => {
    // A test that failed with the database frozen must not leave the next one without it.
    database?.resume();
  });

  afterAll(async () => {
    process.stdout.write(`database stall figures:\n  ${figures.join('\n  ')}\n`);
    await teardown.stopAll();
  }, 30_000);

  const issue = () =>
    call(api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: agentKey,
      body: issueBody({ consoleType: 'novnc', host: '127.0.0.1', port: upstream.port }),
    });
  const introspect = (token: string) => call(api.baseUrl, 'POST', '/v1/tokens/introspect', { key: operatorKey, body: { token } });
  const purge = () => call(api.baseUrl, 'POST', '/v1/cells/cell1/tokens/purge', { key: operatorKey, body: {} });
  const readiness = async (base: string) => (await fetch(`${base}/readyz`)).status;
  const apiReady = () => readiness(api.baseUrl);
  const proxyReady = () => readiness(`http://127.0.0.1:${proxy.port}`);
  const consoleUrl = (token: string) => `${proxy.wsBase}/?token=${encodeURIComponent(token)}`;

  /** A token issued while the database answers. */
  const workingToken = async (): Promise<string> => {
    const issued = await issue();
    expect(issued.status).toBe(201);
    return issued.body.token as string;
  };

  /** One upgrade with this token: true when the websocket opened, else the refusal's status and body. */
  const upgrade = (token: string): Promise<true | { status: number; body: string }> =>
    withDeadline(
      new Promise((resolve, reject) => {
        const ws = new WebSocket(consoleUrl(token), ['binary']);
        ws.once('open', () => {
          ws.terminate();
          resolve(true);
        });
        ws.once('unexpected-response', (_request, response) => {
          const chunks: Buffer[] = [];
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.once('end', () => {
            ws.terminate();
            resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') });
          });
        });
        ws.once('error', reject);
      }),
      ANSWER_WITHIN_MS * 2,
      'the proxy to answer an upgrade',
    );

  /** Waits until the API and the proxy serve again (issue, introspect, upgrade, both readiness probes); resolves with how long it took. */
  const recovery = async (since: number): Promise<number> => {
    await waitUntil(
      async () => {
        if ((await apiReady()) !== 200 || (await proxyReady()) !== 200) {
          return undefined;
        }
        const issued = await issue();
        if (issued.status !== 201) {
          return undefined;
        }
        const looked = await introspect(issued.body.token as string);
        return looked.status === 200 && (await upgrade(issued.body.token as string)) === true ? true : undefined;
      },
      15_000,
      'the API and the proxy to serve again',
      { intervalMs: 50 },
    );
    return Math.round(performance.now() - since);
  };

  it('serves while the database answers', async () => {
    const token = await workingToken();
    expect((await introspect(token)).status).toBe(200);
    expect(await upgrade(token)).toBe(true);
    expect(await apiReady()).toBe(200);
    expect(await proxyReady()).toBe(200);
    const listed = await timed(() => keyhole(['tokens', 'list', '--cell', 'cell1'], cliEnvironment));
    expect(listed.value).toMatchObject({ code: 0 });
    cliBaselineMs = listed.ms;
  }, 30_000);

  it('with the database frozen, answers every request with 503 within the deadlines, and serves again once it is resumed', async () => {
    const token = await workingToken();
    database.pause();
    const frozenAt = performance.now();

    const readyApi = await timed(apiReady);
    const readyProxy = await timed(proxyReady);
    expect(readyApi.value).toBe(503);
    expect(readyProxy.value).toBe(503);

    const issues: number[] = [];
    const upgrades: number[] = [];
    for (let attempt = 0; attempt < 3; attempt++) {
      const issued = await timed(issue);
      expectError(issued.value, 503, 'SERVICE_UNAVAILABLE');
      issues.push(issued.ms);
      const refused = await timed(() => upgrade(token));
      expect(refused.value).toEqual({
        status: 503,
        body: JSON.stringify({ code: 'UNAVAILABLE', message: 'console authorization is unavailable' }),
      });
      upgrades.push(refused.ms);
    }
    const looked = await timed(() => introspect(token));
    expectError(looked.value, 503, 'SERVICE_UNAVAILABLE');
    const purged = await timed(purge);
    expect(purged.value.status).toBe(503);
    const listed = await timed(() => keyhole(['tokens', 'list', '--cell', 'cell1'], cliEnvironment));
    expect(listed.value.code).toBe(1);
    expect(listed.value.err).toMatch(/SERVICE_UNAVAILABLE|CELL_DATABASE_UNREACHABLE/);

    figures.push(
      `frozen: readiness not ready after API ${readyApi.ms} ms, proxy ${readyProxy.ms} ms (deadlines ${DEADLINE_MS} ms)`,
      `frozen: 503 on issue after ${issues.join(', ')} ms (median ${median(issues)}), on upgrade after ${upgrades.join(', ')} ms (median ${median(upgrades)})`,
      `frozen: introspect 503 after ${looked.ms} ms, purge 503 after ${purged.ms} ms, CLI exit 1 after ${listed.ms} ms (${cliBaselineMs} ms when the database answers)`,
    );
    for (const ms of [readyApi.ms, readyProxy.ms, ...issues, ...upgrades, looked.ms, purged.ms]) {
      expect(ms).toBeLessThan(ANSWER_WITHIN_MS);
    }
    expect(listed.ms).toBeLessThan(cliBaselineMs + ANSWER_WITHIN_MS + 1_000);

    const metrics = await scrapeMetrics(api.baseUrl);
    expect(metricValue(metrics, 'keyhole_db_deadline_exceeded_total', { database: 'control' })).toBeGreaterThan(0);

    const frozenForMs = Math.round(performance.now() - frozenAt);
    database.resume();
    const recoveredInMs = await recovery(performance.now());
    figures.push(`frozen for ${frozenForMs} ms; serving again ${recoveredInMs} ms after the resume`);
  }, 60_000);

  it('with the database killed, answers at once with 503, and serves again once it is restarted', async () => {
    const token = await workingToken();
    await database.kill();
    const issued = await timed(issue);
    expect(issued.value.status).toBe(503);
    const refused = await timed(() => upgrade(token));
    expect(refused.value).toMatchObject({ status: 503 });
    const readyApi = await timed(apiReady);
    const readyProxy = await timed(proxyReady);
    expect([readyApi.value, readyProxy.value]).toEqual([503, 503]);
    for (const ms of [issued.ms, refused.ms, readyApi.ms, readyProxy.ms]) {
      expect(ms).toBeLessThan(ANSWER_WITHIN_MS);
    }
    const restartedAt = performance.now();
    await database.restart();
    const recoveredInMs = await recovery(restartedAt);
    figures.push(
      `killed: 503 on issue after ${issued.ms} ms, on upgrade after ${refused.ms} ms, readiness ${readyApi.ms} / ${readyProxy.ms} ms`,
      `killed: serving again ${recoveredInMs} ms after the restart began`,
    );
  }, 60_000);

  /** Request `index` of a burst: an issue (even) or an upgrade with one of `tokens` (odd); resolves with what it got and how fast. */
  const burstRequest = (tokens: string[], index: number) =>
    timed(async () => {
      if (index % 2 === 0) {
        return `issue ${(await issue()).status}`;
      }
      const outcome = await upgrade(tokens[index % tokens.length]);
      return `upgrade ${outcome === true ? 101 : outcome.status}`;
    });
  const ANSWERS = ['issue 201', 'issue 503', 'upgrade 101', 'upgrade 503'];
  const countAnswers = (answers: Timed<string>[]) =>
    JSON.stringify(answers.reduce<Record<string, number>>((all, answer) => ({ ...all, [answer.value]: (all[answer.value] ?? 0) + 1 }), {}));

  it('under load while frozen then resumed: every request is answered (201 or 503, never 500, never a hang), and the pools work afterwards', async () => {
    const tokens = await Promise.all([workingToken(), workingToken()]);
    const request = (index: number) => burstRequest(tokens, index);
    const wave = 20;
    database.pause();
    const frozen = Array.from({ length: wave }, (_, index) => request(index));
    // Past the deadlines of the first wave, a second one meets the resume.
    const resumeAfterMs = 2 * DEADLINE_MS + 500;
    await new Promise((resolve) => setTimeout(resolve, resumeAfterMs - 300));
    const straddling = Array.from({ length: wave }, (_, index) => request(index));
    await new Promise((resolve) => setTimeout(resolve, 300));
    database.resume();
    const resumedAt = performance.now();
    const answers = [...(await Promise.all(frozen)), ...(await Promise.all(straddling))];
    for (const answer of answers) {
      expect(ANSWERS).toContain(answer.value);
      expect(answer.ms).toBeLessThan(ANSWER_WITHIN_MS);
    }
    expect(answers.slice(0, wave).every((answer) => answer.value.endsWith('503'))).toBe(true);
    const recoveredInMs = await recovery(resumedAt);
    // The pools serve a burst once the database answers: no connection stayed stuck.
    const after = await Promise.all(Array.from({ length: wave }, (_, index) => request(index)));
    expect(after.map((answer) => answer.value).sort()).toEqual([
      ...Array(wave / 2).fill('issue 201'),
      ...Array(wave / 2).fill('upgrade 101'),
    ]);
    figures.push(
      `load: ${2 * wave} concurrent requests, frozen for ${resumeAfterMs} ms: ${countAnswers(answers)}, slowest ${Math.max(...answers.map((answer) => answer.ms))} ms; serving again ${recoveredInMs} ms after the resume`,
    );
  }, 60_000);

  it('under load while killed then restarted: every request is answered at once, and the pools work afterwards', async () => {
    const tokens = await Promise.all([workingToken(), workingToken()]);
    const wave = 20;
    const killing = database.kill();
    const during = Array.from({ length: wave }, (_, index) => burstRequest(tokens, index));
    await killing;
    const answers = await Promise.all(during);
    for (const answer of answers) {
      expect(ANSWERS).toContain(answer.value);
      expect(answer.ms).toBeLessThan(ANSWER_WITHIN_MS);
    }
    const restartedAt = performance.now();
    await database.restart();
    const recoveredInMs = await recovery(restartedAt);
    const after = await Promise.all(Array.from({ length: wave }, (_, index) => burstRequest(tokens, index)));
    expect(after.map((answer) => answer.value).sort()).toEqual([
      ...Array(wave / 2).fill('issue 201'),
      ...Array(wave / 2).fill('upgrade 101'),
    ]);
    figures.push(
      `load: ${wave} concurrent requests as the database is killed: ${countAnswers(answers)}, slowest ${Math.max(...answers.map((answer) => answer.ms))} ms; serving again ${recoveredInMs} ms after the restart began`,
    );
  }, 60_000);
});
