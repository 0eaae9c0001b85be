import { randomUUID } from 'node:crypto';
import { queryDatabase } from '../support/databases';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { Teardown } from '../support/teardown';
import { call } from '../support/token-api';
import { QUIET_API_ENVIRONMENT, startTokenApiProcess, TokenApiProcess } from '../support/token-api-process';
import { waitUntil } from '../support/wait';
import { sha256 } from './helpers';

/*
 * "Issuing is durable before it answers": the token API, a process of its own on real PostgreSQL,
 * is killed with SIGKILL in the middle of a burst of concurrent issue requests, then started again
 * on the same databases. Every token a client got a 201 for must be valid afterwards; a request
 * that got no answer may or may not have left a token, but never half a row.
 */

jest.setTimeout(90_000);

/** Most issue requests sent, how many are in flight at once, and after how many answers the kill comes. */
const BURST = 400;
const CONCURRENCY = 16;
const KILL_AFTER_ANSWERS = 100;

interface Attempt {
  instanceUuid: string;
  status?: number;
  token?: string;
  /** The request failed without an HTTP answer (the process died under it). */
  lost?: boolean;
}

const teardown = new Teardown();
let deployment: TestDeployment;

beforeAll(async () => {
  deployment = teardown.add(await startTestDeployment(), (started) => started.stop());
}, 60_000);

afterAll(async () => {
  await teardown.stopAll();
});

it('keeps every token it answered 201 for across a kill -9 during an issuing burst, and no half-written row', async () => {
  const environment = { ...QUIET_API_ENVIRONMENT, KEYHOLE_DATABASE_URL: deployment.controlUrl, KEYHOLE_DB_POOL_SIZE: '8' };
  const first: TokenApiProcess = teardown.add(await startTokenApiProcess(environment));
  const attempts: Attempt[] = [];
  let answered = 0;
  let killed: Promise<void> | undefined;
  let next = 0;
  const worker = async (): Promise<void> => {
    // No new request once the process is killed: the ones in flight at that moment are the test.
    while (next < BURST && killed === undefined) {
      next += 1;
      const attempt: Attempt = { instanceUuid: randomUUID() };
      attempts.push(attempt);
      try {
        const answer = await call(first.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
          key: deployment.agentKeys.cell1,
          body: { instanceUuid: attempt.instanceUuid, consoleType: 'novnc', host: '192.0.2.10', port: 5900 },
        });
        attempt.status = answer.status;
        attempt.token = answer.status === 201 ? answer.body.token : undefined;
        answered += 1;
        if (answered === KILL_AFTER_ANSWERS) {
          // SIGKILL to the process group: no shutdown hook, no flush, no last commit.
          killed = first.process.stop(0, 'SIGKILL');
        }
      } catch {
        attempt.lost = true;
        if (killed === undefined) {
          throw new Error('a request failed before the kill');
        }
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  await killed;
  expect(first.process.hasExited()).toBe(true);

  const issued = attempts.filter((attempt) => attempt.status === 201);
  const lost = attempts.filter((attempt) => attempt.lost);
  // The kill came mid-burst: answers before it, requests that died with it.
  expect(issued.length).toBeGreaterThanOrEqual(KILL_AFTER_ANSWERS - CONCURRENCY);
  expect(lost.length).toBeGreaterThan(0);
  // Every answer before the kill was a 201, or the documented 503 of a database that did not answer
  // in time on a loaded machine (then no token exists for it, checked below).
  expect(attempts.filter((attempt) => !attempt.lost && attempt.status !== 201 && attempt.status !== 503)).toEqual([]);
  const unavailable = new Set(attempts.filter((attempt) => attempt.status === 503).map((attempt) => attempt.instanceUuid));

  // The same databases, a new process: every token a client holds is valid.
  const second = teardown.add(await startTokenApiProcess(environment));
  const invalid: string[] = [];
  const queue = [...issued];
  const introspect = async (): Promise<void> => {
    for (let attempt = queue.shift(); attempt !== undefined; attempt = queue.shift()) {
      const introspection = await call(second.baseUrl, 'POST', '/v1/tokens/introspect', {
        key: deployment.operatorKey,
        body: { token: attempt.token, cell: 'cell1' },
      });
      if (introspection.status !== 200 || introspection.body.console?.instance_uuid !== attempt.instanceUuid) {
        invalid.push(`${attempt.instanceUuid}: ${introspection.status}`);
      }
    }
  };
  await Promise.all(Array.from({ length: 8 }, introspect));
  expect(invalid).toEqual([]);

  // The rows: one per answered token, each complete; requests that died left one row or none.
  const rows = await queryDatabase<{ token_hash: string; instance_uuid: string; complete: boolean }>(
    deployment.cellUrls.cell1,
    `SELECT token_hash, instance_uuid,
            (console_type = 'novnc' AND host = '192.0.2.10' AND port = 5900 AND expires > extract(epoch FROM now())
             AND access_url_base IS NOT NULL AND created_at IS NOT NULL) AS complete
       FROM console_auth_tokens`,
  );
  expect(rows.filter((row) => !row.complete)).toEqual([]);
  expect(rows.filter((row) => unavailable.has(row.instance_uuid))).toEqual([]);
  const sent = new Set(attempts.map((attempt) => attempt.instanceUuid));
  expect(rows.filter((row) => !sent.has(row.instance_uuid))).toEqual([]);
  const rowsPerInstance = new Map<string, number>();
  for (const row of rows) {
    rowsPerInstance.set(row.instance_uuid, (rowsPerInstance.get(row.instance_uuid) ?? 0) + 1);
  }
  expect([...rowsPerInstance].filter(([, count]) => count > 1)).toEqual([]);
  const hashes = new Set(rows.map((row) => row.token_hash));
  expect(issued.filter((attempt) => !hashes.has(sha256(attempt.token!)))).toEqual([]);
  expect(rows.length).toBeLessThanOrEqual(issued.length + lost.length);
  expect(lost.length).toBeLessThanOrEqual(CONCURRENCY);

  // And the new process issues as before.
  await waitUntil(async () => ((await call(second.baseUrl, 'GET', '/readyz')).status === 200 ? true : undefined), 5_000, 'readiness');
  const after = await call(second.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
    key: deployment.agentKeys.cell1,
    body: { instanceUuid: randomUUID(), consoleType: 'novnc', host: '192.0.2.10', port: 5900 },
  });
  expect(after.status).toBe(201);
});
