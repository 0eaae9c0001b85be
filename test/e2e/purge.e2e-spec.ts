import { sha256Hex } from '@keyhole/core';
import { queryDatabase } from '../support/databases';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { waitUntil } from '../support/wait';

/** The token API purges every cell on its own schedule, and says so in its metrics. */
describe('scheduled purge', () => {
  let deployment: TestDeployment;

  beforeAll(async () => {
    deployment = await startTestDeployment({ environment: { KEYHOLE_PURGE_INTERVAL_MS: '200' } });
  });
  afterAll(async () => {
    await deployment?.stop();
  });

  it('deletes expired tokens of every cell within a few intervals, and keeps valid ones', async () => {
    const now = Math.floor(Date.now() / 1000);
    for (const [cell, url] of Object.entries(deployment.cellUrls)) {
      for (const [token, expires] of [
        [`expired-${cell}`, now - 1],
        [`valid-${cell}`, now + 3600],
      ] as const) {
        await queryDatabase(
          url,
          `INSERT INTO console_auth_tokens (token_hash, console_type, host, port, instance_uuid, expires)
           VALUES ($1, 'novnc', 'hv1', 5900, '6f1c2b7e-3d4a-4b5c-9d8e-7f6a5b4c3d2e', $2)`,
          [sha256Hex(token), expires],
        );
      }
    }
    const remaining = await waitUntil(
      async () => {
        const rows = (
          await Promise.all(
            Object.values(deployment.cellUrls).map((url) => queryDatabase(url, 'SELECT token_hash FROM console_auth_tokens')),
          )
        ).flat();
        return rows.length === 2 ? rows : undefined;
      },
      5_000,
      'the scheduled purge of both cells',
      { intervalMs: 100 },
    );
    expect(remaining.map((row) => row.token_hash).sort()).toEqual([sha256Hex('valid-cell1'), sha256Hex('valid-cell2')].sort());
    const metrics = await scrapeMetrics(deployment.api.baseUrl);
    expect(metricValue(metrics, 'keyhole_purge_rows_total', { cell: 'cell1', kind: 'tokens' })).toBe(1);
    expect(metricValue(metrics, 'keyhole_purge_rows_total', { cell: 'cell2', kind: 'tokens' })).toBe(1);
    expect(metricValue(metrics, 'keyhole_purge_duration_seconds_count', { cell: 'cell1' })).toBeGreaterThanOrEqual(1);
  });
});
