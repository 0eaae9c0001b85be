import { CellsService } from '@keyhole/cells';
import { Clock } from '@keyhole/core';
import { CredentialsService } from '@keyhole/credentials';
import { TokenGenerator } from '@keyhole/tokens';
import { testConfig } from './config';
import { createTestDatabase } from './databases';
import type { TestPostgresServer } from './postgres-server';
import { RunningTokenApi, startTokenApi } from './token-api';

export interface TestDeployment {
  api: RunningTokenApi;
  controlUrl: string;
  cellUrls: Record<string, string>;
  operatorKey: string;
  agentKeys: Record<string, string>;
  stop: () => Promise<void>;
}

/**
 * A control database, cells `cell1` and `cell2` with their own databases, the token API, an
 * operator key for every cell and an agent key per cell: what `npm start` sets up, per test file.
 * With `postgres` (a server of the test's own, to freeze or kill), its control database and one
 * cell, `cell1`, in its cell database; they are the server's, left to its `close()`.
 */
export async function startTestDeployment(
  options: { clock?: Clock; tokenGenerator?: TokenGenerator; environment?: Record<string, string>; postgres?: TestPostgresServer } = {},
): Promise<TestDeployment> {
  const owned = (url: string) => ({ url, drop: async () => undefined });
  const control = options.postgres ? owned(options.postgres.controlUrl) : await createTestDatabase('control');
  const cells: Record<string, { url: string; drop: () => Promise<void> }> = options.postgres
    ? { cell1: owned(options.postgres.cellUrl) }
    : { cell1: await createTestDatabase('cell'), cell2: await createTestDatabase('cell') };
  const api = await startTokenApi(testConfig(control.url, options.environment), options);
  const cellsService = api.app.get(CellsService);
  const credentials = api.app.get(CredentialsService);
  const agentKeys: Record<string, string> = {};
  for (const [name, database] of Object.entries(cells)) {
    await cellsService.register({ name, databaseUrl: database.url, proxyUrl: `http://${name}.console.test:6080` });
    agentKeys[name] = (await credentials.create({ name: `agent-${name}`, role: 'agent', cellName: name })).key;
  }
  const operatorKey = (await credentials.create({ name: 'operator', role: 'operator', cellName: null })).key;
  return {
    api,
    controlUrl: control.url,
    cellUrls: Object.fromEntries(Object.entries(cells).map(([name, database]) => [name, database.url])),
    operatorKey,
    agentKeys,
    stop: async () => {
      await api.close();
      for (const database of [control, ...Object.values(cells)]) {
        await database.drop();
      }
    },
  };
}
