import { createTestDatabase, migrateTestDatabase, queryDatabase } from '../support/databases';
import { testConfig } from '../support/config';
import { startTestDeployment } from '../support/deployment';
import { startProxyProcess } from '../support/proxy-process';
import { call, startTokenApi } from '../support/token-api';
import { Teardown } from '../support/teardown';

/*
 * A console proxy on a cell database whose keyhole schema is incomplete (issue 14): it used to
 * answer ready and then fail every serial console with 503 (the exclusive-console index was
 * missing). Now it refuses to start, naming the cell and the command, and a cell that loses part
 * of its schema while the proxy runs makes it not ready.
 */

const teardown = new Teardown();
afterAll(() => teardown.stopAll(), 60_000);

/** Undoes one applied migration by hand, as a restore of an older backup would. */
async function removeExclusiveConsoleIndex(url: string): Promise<void> {
  await queryDatabase(url, `DELETE FROM keyhole_migrations WHERE name = 'AddExclusiveConsoleIndex1796025000000'`);
  await queryDatabase(url, 'DROP INDEX console_sessions_exclusive_target_idx');
}

describe('console proxy on an incomplete cell schema', () => {
  it('refuses to start, naming the cell, what is missing and the command to run', async () => {
    const cell = teardown.add(await createTestDatabase('cell'), (database) => database.drop());
    await removeExclusiveConsoleIndex(cell.url);

    const started = startProxyProcess({ KEYHOLE_CELL_NAME: 'cell7', KEYHOLE_CELL_DATABASE_URL: cell.url });
    const error = await started.then(
      async (proxy) => {
        await proxy.stop();
        throw new Error('the proxy started on an incomplete schema');
      },
      (refused: unknown) => refused as Error,
    );
    expect(error.message).toMatch(/proxy exited \(1\) before listening/);
    expect(error.message).toContain("The database of cell 'cell7' lacks keyhole's schema");
    expect(error.message).toContain('migrations not applied: AddExclusiveConsoleIndex1796025000000');
    expect(error.message).toContain('keyhole migrate');
  });

  it('says not ready once the schema it started on becomes incomplete, and ready again once it is complete', async () => {
    const cell = teardown.add(await createTestDatabase('cell'), (database) => database.drop());
    const proxy = teardown.add(await startProxyProcess({ KEYHOLE_CELL_NAME: 'cell1', KEYHOLE_CELL_DATABASE_URL: cell.url }), (started) =>
      started.stop().then(() => undefined),
    );
    const readiness = async () => {
      const response = await fetch(`http://127.0.0.1:${proxy.port}/readyz`);
      return { status: response.status, body: (await response.json()) as Record<string, unknown> };
    };
    expect(await readiness()).toMatchObject({ status: 200, body: { status: 'ready', cellDatabase: true, cellSchema: true } });

    await removeExclusiveConsoleIndex(cell.url);
    expect(await readiness()).toEqual({
      status: 503,
      body: expect.objectContaining({
        status: 'unavailable',
        cellDatabase: true,
        cellSchema: false,
        cellSchemaProblems: ['migrations not applied: AddExclusiveConsoleIndex1796025000000'],
        fix: 'keyhole migrate',
      }),
    });

    // `keyhole migrate` applies it again; the proxy is ready without a restart.
    expect(await migrateTestDatabase('cell', cell.url)).toEqual(['AddExclusiveConsoleIndex1796025000000']);
    expect(await readiness()).toMatchObject({ status: 200, body: { status: 'ready', cellSchema: true } });
  });

  it("answers 503 CELL_SCHEMA_INCOMPLETE from the token API for a cell whose database lost part of keyhole's schema", async () => {
    const deployment = teardown.add(await startTestDeployment(), (started) => started.stop());
    await removeExclusiveConsoleIndex(deployment.cellUrls.cell1);
    // A token API that starts now (the running one opened cell1 while it was complete).
    const api = teardown.add(await startTokenApi(testConfig(deployment.controlUrl)));
    const issued = await call(api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: deployment.agentKeys.cell1,
      body: { instanceUuid: '7d4f0a2e-5b6c-4d8e-9f01-23456789abcd', consoleType: 'serial', host: '192.0.2.10', port: 10000 },
    });
    expect(issued.status).toBe(503);
    expect(issued.body).toMatchObject({
      code: 'CELL_SCHEMA_INCOMPLETE',
      message: expect.stringContaining('keyhole migrate'),
      details: { cell: 'cell1', problems: ['migrations not applied: AddExclusiveConsoleIndex1796025000000'] },
    });
    // The other cell is served.
    const other = await call(api.baseUrl, 'POST', '/v1/cells/cell2/tokens', {
      key: deployment.agentKeys.cell2,
      body: { instanceUuid: '7d4f0a2e-5b6c-4d8e-9f01-23456789abcd', consoleType: 'serial', host: '192.0.2.10', port: 10000 },
    });
    expect(other.status).toBe(201);
  });
});
