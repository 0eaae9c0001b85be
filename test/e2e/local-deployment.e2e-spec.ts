import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sha256Hex } from '@keyhole/core';
import { LocalDeployment, startLocalDeployment } from '../../apps/cli/src/local/local-deployment';
import { call } from '../support/token-api';

/**
 * What `npm start` runs, on a fresh machine with no configuration: an embedded PostgreSQL, the
 * control database and two cells, keys, the token API. Started twice on the same data directory,
 * as a developer would.
 */
describe('local deployment (npm start)', () => {
  let dataDir: string;
  let deployment: LocalDeployment | undefined;

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'keyhole-local-'));
    // As root, PostgreSQL runs as OS user postgres, which must be able to enter the directory.
    await chmod(dataDir, 0o755);
  });

  afterAll(async () => {
    await deployment?.stop();
    await rm(dataDir, { recursive: true, force: true });
  });

  const start = (apiPort = 0) =>
    startLocalDeployment({
      dataDir,
      apiPort,
      proxyPorts: [0, 0],
      environment: { KEYHOLE_ARGON2_MEMORY_KIB: '64', KEYHOLE_ARGON2_TIME_COST: '1', KEYHOLE_LOG_LEVEL: 'debug' },
      onProgress: () => undefined,
    });

  it('serves the printed URLs with the printed keys, and the keys of a previous start stop working', async () => {
    deployment = await start();
    expect((await call(deployment.apiUrl, 'GET', '/readyz')).status).toBe(200);
    const openApi = await call(deployment.openApiUrl, 'GET', '');
    expect(openApi.body.openapi).toBe('3.1.0');
    expect(deployment.cells.map((cell) => cell.name)).toEqual(['cell1', 'cell2']);

    const issued = await call(deployment.apiUrl, 'POST', '/v1/cells/cell2/tokens', {
      key: deployment.agentKeys.cell2,
      body: { instanceUuid: '0b6a3c52-1e0f-4a9d-8c7b-6d5e4f3a2b1c', consoleType: 'serial', host: '127.0.0.1', port: 10000 },
    });
    expect(issued.status).toBe(201);
    const cell2 = deployment.cells.find((cell) => cell.name === 'cell2')!;
    expect(issued.body.accessUrl).toBe(`${cell2.serialPage}?token=${issued.body.token}`);
    expect((await call(cell2.proxyUrl, 'GET', '/readyz')).body).toMatchObject({ status: 'ready', cell: 'cell2' });
    const introspected = await call(deployment.apiUrl, 'POST', '/v1/tokens/introspect', {
      key: deployment.operatorKey,
      body: { token: issued.body.token },
    });
    expect(introspected.status).toBe(200);
    expect(introspected.body.cell).toBe('cell2');

    // Its routes file allows loopback console ports only: never its own database or API.
    expect(deployment.routesFile).toBe(path.join(dataDir, 'routes.yaml'));
    const databasePort = Number(new URL((await readFile(deployment.controlUrlFile, 'utf8')).trim()).port);
    const ownPorts = [databasePort, Number(new URL(deployment.apiUrl).port), Number(new URL(cell2.proxyUrl).port)];
    for (const port of ownPorts) {
      const refused = await call(deployment.apiUrl, 'POST', '/v1/cells/cell2/tokens', {
        key: deployment.agentKeys.cell2,
        body: { instanceUuid: '0b6a3c52-1e0f-4a9d-8c7b-6d5e4f3a2b1c', consoleType: 'novnc', host: '127.0.0.1', port },
      });
      expect({ status: refused.status, code: refused.body.code }).toEqual({ status: 400, code: 'UNROUTABLE_CONSOLE' });
    }

    const firstOperatorKey = deployment.operatorKey;
    await deployment.stop();
    deployment = await start();
    expect((await call(deployment.apiUrl, 'GET', '/v1/cells', { key: firstOperatorKey })).status).toBe(401);
    const cells = await call(deployment.apiUrl, 'GET', '/v1/cells', { key: deployment.operatorKey });
    expect(cells.body.cells.map((cell: { name: string }) => cell.name)).toEqual(['cell1', 'cell2']);
    // The token issued before the restart is still valid: the data directory was kept.
    const again = await call(deployment.apiUrl, 'POST', '/v1/tokens/introspect', {
      key: deployment.operatorKey,
      body: { token: issued.body.token },
    });
    expect(again.status).toBe(200);

    // An own port inside a console range is left out of it.
    await deployment.stop();
    deployment = await start(15_123);
    const inRange = await call(deployment.apiUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: deployment.agentKeys.cell1,
      body: { instanceUuid: '0b6a3c52-1e0f-4a9d-8c7b-6d5e4f3a2b1c', consoleType: 'serial', host: '127.0.0.1', port: 15_123 },
    });
    expect({ status: inRange.status, code: inRange.body.code }).toEqual({ status: 400, code: 'UNROUTABLE_CONSOLE' });
    expect(await readFile(deployment.routesFile, 'utf8')).toContain('ports: "5900-5999,10000-15122,15124-20000"');

    const log = await readFile(deployment.logFile, 'utf8');
    expect(log).toContain(sha256Hex(issued.body.token).slice(0, 12));
    expect(log).not.toContain(issued.body.token);
    // khk_<16 hex id>_<43 base64url characters, which may hold '_'>: the secret is all after the id.
    expect(log).not.toContain(deployment.operatorKey.slice(21));
  }, 120_000);
});
