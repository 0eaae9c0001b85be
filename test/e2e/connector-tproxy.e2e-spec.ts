import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readlink, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { Namespace, NetworkLab } from '../support/real/netns';
import { ManagedProcess, startProcess, waitForOutput } from '../support/real/processes';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';

/*
 * OpenNebula's transparent proxy, its own case: a process in a `tenant` network namespace with no
 * route out (here curl, as a compute agent or a guest would) reaches the token API at
 * 169.254.16.9:5030. `keyhole connector expose` listens there, inside the tenant namespace, and
 * carries each connection over a UNIX socket to `keyhole connector serve` in the root namespace,
 * which dials the API. The two TCP/IP stacks never meet.
 */

jest.setTimeout(120_000);

const CONNECTOR_MAIN = path.resolve(__dirname, '../../dist/apps/connector/src/main.js');
const CLI = path.resolve(__dirname, '../../bin/keyhole');
const ONEGATE_ADDRESS = '169.254.16.9';
const SERVICE_PORT = 5030;
/** An entry for another tenant network: not listened on in this one. */
const OTHER_NETWORK_PORT = 5031;
const run = promisify(execFile);

let lab: NetworkLab;
let tenant: Namespace;
let dir: string;
let runDir: string;
let deployment: TestDeployment;
let apiPort: number;
let serve: ManagedProcess;
let expose: ManagedProcess;

function connectorEnvironment(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, KEYHOLE_RUN_DIR: runDir, KEYHOLE_LOG_LEVEL: 'info' };
}

/** curl inside the tenant namespace: its exit code (7: connection refused), HTTP status and body. */
async function curlInTenant(url: string, body: unknown): Promise<{ exitCode: number; status?: number; body?: any }> {
  const args = ['netns', 'exec', tenant.name, 'curl', '-sS', '--max-time', '20', '-X', 'POST', url];
  args.push('-H', `Authorization: Bearer ${deployment.agentKeys.cell1}`, '-H', 'Content-Type: application/json');
  args.push('-d', JSON.stringify(body), '-w', '\n%{http_code}');
  try {
    const { stdout } = await run('ip', args, { timeout: 60_000 });
    const lines = stdout.trimEnd().split('\n');
    const status = Number(lines.pop());
    return { exitCode: 0, status, body: JSON.parse(lines.join('\n')) };
  } catch (error) {
    return { exitCode: (error as { code?: number }).code ?? -1 };
  }
}

async function connectorStatus(): Promise<any[]> {
  const { stdout } = await run(process.execPath, [CLI, 'connector', 'status', '--json'], { env: connectorEnvironment(), timeout: 30_000 });
  return JSON.parse(stdout);
}

const tokenRequest = () => ({ instanceUuid: randomUUID(), consoleType: 'novnc', host: '127.0.0.1', port: 5900 });

beforeAll(async () => {
  lab = await NetworkLab.create();
  tenant = await lab.namespace('tenant');
  // OpenNebula's address of management services, on the tenant's own loopback: no link, no route out.
  await run('ip', ['-n', tenant.name, 'address', 'add', `${ONEGATE_ADDRESS}/32`, 'dev', 'lo']);
  dir = await mkdtemp(path.join(os.tmpdir(), 'keyhole-tproxy-'));
  runDir = path.join(dir, 'run');
  const socketPath = path.join(dir, 'onegate.sock');

  deployment = await startTestDeployment();
  apiPort = Number(new URL(deployment.api.baseUrl).port);

  const serveRoutes = path.join(dir, 'serve-routes.yaml');
  await writeFile(
    serveRoutes,
    ['routes:', '  - name: token-api', `    match: { cidr: 127.0.0.1/32, ports: "${apiPort}" }`, '    via: direct', ''].join('\n'),
  );
  // The operator CLI's `keyhole connector serve` here; expose runs from the connector's own entry point.
  serve = await startProcess(
    process.execPath,
    [
      CLI,
      'connector',
      'serve',
      '--name',
      'onegate',
      '--socket',
      socketPath,
      '--routes',
      serveRoutes,
      '--grace-ms',
      '1000',
      '--metrics-port',
      '0',
    ],
    { name: 'connector serve', env: connectorEnvironment() },
  );
  await waitForOutput(serve, /"msg":"connector listening"/, 20_000);

  const tproxyFile = path.join(dir, 'OpenNebulaNetwork.conf');
  await writeFile(
    tproxyFile,
    [
      ':tproxy:',
      `  - :service_port: ${SERVICE_PORT}`,
      '    :remote_addr: 127.0.0.1',
      `    :remote_port: ${apiPort}`,
      `  - :service_port: ${OTHER_NETWORK_PORT}`,
      '    :remote_addr: 127.0.0.1',
      `    :remote_port: ${apiPort}`,
      '    :networks: [tenant-b]',
      `  - service_port: ${SERVICE_PORT}`,
      '    remote_addr: 127.0.0.1',
      '    remote_port: 22',
      ':debug_level: 2',
      '',
    ].join('\n'),
  );
  expose = await lab.start(
    tenant,
    process.execPath,
    [
      CONNECTOR_MAIN,
      'expose',
      '--name',
      'tenant',
      '--tproxy',
      tproxyFile,
      '--socket',
      socketPath,
      '--network',
      'tenant-a',
      '--grace-ms',
      '1000',
    ],
    { name: 'connector expose in tenant', env: connectorEnvironment() },
  );
  await waitForOutput(expose, /"msg":"connector listening"/, 20_000);
}, 120_000);

afterAll(async () => {
  await expose?.stop(5_000);
  await serve?.stop(5_000);
  await lab?.destroy();
  await deployment?.stop();
  if (dir) {
    await rm(dir, { recursive: true, force: true });
  }
});

describe('a tenant namespace without a route out reaches the token API at 169.254.16.9', () => {
  it('has no route to the API itself', async () => {
    // Its 127.0.0.1 is its own loopback: nothing listens there.
    expect((await lab.probeTcp(tenant, '127.0.0.1', apiPort)).result).toBe('refused');
  });

  it('warns about the duplicate service port and listens only for the entries of its network', () => {
    const warning = expose
      .output()
      .split('\n')
      .find((line) => line.includes('tproxy entry ignored'));
    expect(JSON.parse(warning!)).toMatchObject({ level: 'warn', entry: 2, firstEntry: 0, servicePort: SERVICE_PORT });
    const listening = JSON.parse(
      expose
        .output()
        .split('\n')
        .find((line) => line.includes('"msg":"connector listening"'))!,
    );
    expect(listening.listening).toEqual([{ listen: `${ONEGATE_ADDRESS}:${SERVICE_PORT}`, remote: `127.0.0.1:${apiPort}` }]);
  });

  it('issues a console token with curl from inside the tenant namespace', async () => {
    const issued = await curlInTenant(`http://${ONEGATE_ADDRESS}:${SERVICE_PORT}/v1/cells/cell1/tokens`, tokenRequest());
    expect(issued).toMatchObject({ exitCode: 0, status: 201, body: { cell: 'cell1', host: '127.0.0.1', port: 5900 } });
    const introspected = await call(deployment.api.baseUrl, 'POST', '/v1/tokens/introspect', {
      key: deployment.operatorKey,
      body: { token: issued.body.token },
    });
    expect(introspected.status).toBe(200);
    // The port of another network's entry is not listened on here.
    expect((await curlInTenant(`http://${ONEGATE_ADDRESS}:${OTHER_NETWORK_PORT}/v1/cells/cell1/tokens`, tokenRequest())).exitCode).toBe(7);
  });

  it('lists both connectors in keyhole connector status, with namespace, PID, addresses and counts', async () => {
    const rows = await waitUntil(
      async () => {
        const listed = await connectorStatus();
        return listed.length === 2 && listed.every((row) => row.total >= 1) ? listed : undefined;
      },
      10_000,
      'both connectors with their connections in the status files',
      { intervalMs: 250 },
    );
    const rootNamespace = await readlink('/proc/self/ns/net');
    expect(rows).toEqual([
      expect.objectContaining({
        name: 'onegate',
        mode: 'serve',
        pid: serve.pid,
        netns: '',
        netnsInode: rootNamespace,
        socket: path.join(dir, 'onegate.sock'),
        state: 'running',
      }),
      expect.objectContaining({
        name: 'tenant',
        mode: 'expose',
        pid: expose.pid,
        netns: tenant.name,
        listening: `${ONEGATE_ADDRESS}:${SERVICE_PORT}`,
        live: 0,
        state: 'running',
      }),
    ]);
    expect(rows[1].netnsInode).not.toBe(rootNamespace);
    expect(rows[0].total).toBe(rows[1].total);
    const { stdout } = await run(process.execPath, [CLI, 'connector', 'status'], { env: connectorEnvironment(), timeout: 30_000 });
    expect(stdout).toMatch(new RegExp(`^tenant\\s+expose\\s+${tenant.name}\\s+${expose.pid}\\s`, 'm'));
  });

  it("counts the serving connector's connections and bytes on its metrics port", async () => {
    const [, address] = /"metrics":"([^"]+)","msg":"metrics listening"/.exec(serve.output())!;
    const text = await scrapeMetrics(`http://${address}`);
    expect(
      metricValue(text, 'keyhole_connector_connections_total', { connector: 'onegate', mode: 'serve', result: 'ok' }),
    ).toBeGreaterThanOrEqual(1);
    expect(metricValue(text, 'keyhole_connector_bytes_total', { direction: 'back' })).toBeGreaterThan(100);
    expect(metricValue(text, 'keyhole_connector_connections_live')).toBe(0);
  });

  it('cannot reach the API once the expose connector is stopped: connection refused', async () => {
    await expose.stop(10_000);
    expect(expose.output()).toContain('"msg":"connector stopped"');
    expect((await curlInTenant(`http://${ONEGATE_ADDRESS}:${SERVICE_PORT}/v1/cells/cell1/tokens`, tokenRequest())).exitCode).toBe(7);
    expect((await connectorStatus()).map((row) => row.name)).toEqual(['onegate']);
  });

  it('stops the serving connector on SIGTERM: exit code 0, socket and status file removed', async () => {
    await serve.stop(10_000);
    expect(await serve.exited).toEqual({ code: 0, signal: null });
    // Every connection had ended: none was cut at the end of the grace period.
    expect(serve.output()).toMatch(/"cut":0,"msg":"connector stopped"/);
    expect(existsSync(path.join(dir, 'onegate.sock'))).toBe(false);
    expect(await connectorStatus()).toEqual([]);
  });
});
