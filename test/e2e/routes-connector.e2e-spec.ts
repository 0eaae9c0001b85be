import { execFile } from 'node:child_process';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createConnection } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { CellsService } from '@keyhole/cells';
import { RunningProxy, startCell1Proxy } from '../support/console-proxy';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { artifactsDir, Browser, launchBrowser, waitForSerialStatus, waitForVncScreen } from '../support/real/browser';
import { Namespace, NetworkLab, ROOT } from '../support/real/netns';
import { freePort } from '../support/real/network';
import { ManagedProcess, waitForOutput } from '../support/real/processes';
import { QemuVm, startQemuVm } from '../support/real/qemu';
import { call } from '../support/token-api';
import { waitUntil, withDeadline } from '../support/wait';
import { stopAfterTests, Teardown } from '../support/teardown';
import { connectConsole, expectRefusedUpgrade } from '../support/websocket-client';

/*
 * The connector route, as in a real cloud: the consoles (QEMU's VNC and serial port, a TCP echo
 * server) listen only inside a `mgmt` network namespace that has no link to anything; the console
 * proxy (this process, in the root namespace) has no route there (an `unreachable` route: a direct
 * connect is refused at once). The only way in is `keyhole connector serve`, started inside `mgmt`,
 * through its UNIX socket, and only to what the connector's own routes allow.
 */

jest.setTimeout(120_000);

const CONNECTOR_MAIN = path.resolve(__dirname, '../../dist/apps/connector/src/main.js');
const ECHO_SCRIPT = path.resolve(__dirname, '../support/real/tcp-echo.cjs');
const run = promisify(execFile);

const teardown = new Teardown();
let lab: NetworkLab;
let mgmt: Namespace;
/** The address the consoles listen on inside `mgmt` (on its loopback, in the lab's /24). */
let mgmtAddress: string;
let dir: string;
let socketPath: string;
let vm: QemuVm;
let echo: ManagedProcess;
let echoPort: number;
/** A port inside `mgmt` that the proxy's routes allow and the connector's do not. */
let forbiddenPort: number;
let connector: ManagedProcess;
let deployment: TestDeployment;
let proxy: RunningProxy;
let browser: Browser;
const artifacts = path.join(artifactsDir(), 'routes-connector');

async function issue(consoleType: 'novnc' | 'serial', port: number): Promise<{ id: number; token: string; accessUrl: string }> {
  const response = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
    key: deployment.agentKeys.cell1,
    body: { instanceUuid: randomUUID(), consoleType, host: mgmtAddress, port },
  });
  expect(response.status).toBe(201);
  return response.body;
}

const websocketUrl = (token: string) => `${proxy.wsBase}/websockify?token=${encodeURIComponent(token)}`;

beforeAll(async () => {
  lab = teardown.add(await NetworkLab.create(), (created) => created.destroy());
  mgmt = await lab.namespace('mgmt');
  // 169.254.B.250: in the lab's /24 (unreachable from the root namespace), on no veth of the lab.
  mgmtAddress = lab.block.replace(/\.0\/24$/, '.250');
  await run('ip', ['-n', mgmt.name, 'address', 'add', `${mgmtAddress}/32`, 'dev', 'lo']);
  dir = teardown.add(await mkdtemp(path.join(os.tmpdir(), 'keyhole-routes-connector-')), (created) =>
    rm(created, { recursive: true, force: true }),
  );
  socketPath = path.join(dir, 'mgmt.sock');

  vm = teardown.add(await startQemuVm({ timeoutMs: 60_000, listen: { namespace: mgmt.name, address: mgmtAddress } }), (started) =>
    started.stop(),
  );
  echoPort = await freePort();
  forbiddenPort = await freePort();
  echo = await lab.start(mgmt, process.execPath, [ECHO_SCRIPT, mgmtAddress, String(echoPort)], { name: 'echo in mgmt' });
  await waitForOutput(echo, /"listening"/, 20_000);

  const connectorRoutes = path.join(dir, 'connector-routes.yaml');
  await writeFile(
    connectorRoutes,
    [
      'routes:',
      '  - name: consoles',
      `    match: { cidr: ${mgmtAddress}/32, ports: "${vm.vncPort},${vm.serialPort},${echoPort}" }`,
      '    via: direct',
      '',
    ].join('\n'),
  );
  connector = await lab.start(
    mgmt,
    process.execPath,
    [CONNECTOR_MAIN, 'serve', '--name', 'mgmt', '--socket', socketPath, '--routes', connectorRoutes, '--grace-ms', '1000'],
    { name: 'connector in mgmt', env: { PATH: process.env.PATH, KEYHOLE_RUN_DIR: path.join(dir, 'run'), KEYHOLE_LOG_LEVEL: 'info' } },
  );
  await waitForOutput(connector, /"msg":"connector listening"/, 20_000);

  // The proxy's routes: the whole lab /24 through the connector (the connector narrows it down).
  const proxyRoutes = path.join(dir, 'proxy-routes.yaml');
  await writeFile(
    proxyRoutes,
    ['routes:', '  - name: mgmt', `    match: { cidr: ${lab.block} }`, `    via: { connector: ${socketPath} }`, ''].join('\n'),
  );
  deployment = teardown.add(await startTestDeployment({ environment: { KEYHOLE_ROUTES_FILE: proxyRoutes } }), (started) => started.stop());
  proxy = teardown.add(await startCell1Proxy(deployment, { KEYHOLE_ROUTES_FILE: proxyRoutes }));
  await deployment.api.app.get(CellsService).updateProxyUrl('cell1', proxy.httpBase);
  browser = teardown.add(await launchBrowser());
}, 180_000);

stopAfterTests(teardown);

describe('consoles in a mgmt namespace, through a connector', () => {
  it('cannot be reached directly from the proxy: the connect is refused at once, not timed out', async () => {
    const probe = await lab.probeTcp(ROOT, mgmtAddress, vm.vncPort, { timeoutMs: 3_000 });
    expect(probe.result).toBe('unreachable');
  });

  it('opens the noVNC access URL in Chromium and shows the VM screen', async () => {
    const issued = await issue('novnc', vm.vncPort);
    const page = await browser.page();
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(issued.accessUrl);
    expect(await waitForVncScreen(page, 30_000)).toBeGreaterThan(0.001);
    await page.screenshot({ path: path.join(artifacts, 'novnc-through-connector.png') });
    expect(errors).toEqual([]);
    await page.close();
    await waitUntil(
      () => (/"destination":"[^"]+","route":"consoles","result":"ok"/.test(connector.output()) ? true : undefined),
      10_000,
      "the connector's log line of the VNC connection",
    );
    expect(connector.output()).not.toContain(issued.token);
  });

  it("opens the serial page and shows the VM's serial output; the port stays exclusive", async () => {
    const issued = await issue('serial', vm.serialPort);
    const page = await browser.page();
    await page.goto(issued.accessUrl);
    await waitForSerialStatus(page, /^connected$/, 20_000);
    await vm.waitForSerialClient({ timeoutMs: 20_000 });
    await vm.reset();
    await page.waitForFunction(() => /SeaBIOS/.test(document.body.innerText), undefined, { timeout: 30_000 });
    await page.screenshot({ path: path.join(artifacts, 'serial-through-connector.png') });
    // One live session per serial port, whatever the route.
    const second = await issue('serial', vm.serialPort);
    expect(await expectRefusedUpgrade(websocketUrl(second.token))).toMatchObject({ status: 409 });
    await page.close();
  });

  it("closes with 1011 and the connector's reason a destination the proxy's routes allow and the connector's do not", async () => {
    const issued = await issue('novnc', forbiddenPort);
    const client = await connectConsole(websocketUrl(issued.token));
    const closed = await client.waitForClose(20_000);
    expect(closed).toMatchObject({ code: 1011, reason: 'console unreachable: connector refused: not allowed' });
    await waitUntil(
      () => (connector.output().includes(`"destination":"${mgmtAddress}:${forbiddenPort}"`) ? true : undefined),
      10_000,
      "the connector's refusal line",
    );
    const line = connector
      .output()
      .split('\n')
      .find((candidate) => candidate.includes(`"destination":"${mgmtAddress}:${forbiddenPort}"`));
    expect(JSON.parse(line!)).toMatchObject({ level: 'warn', result: 'not allowed', msg: 'connection refused' });
  });

  it('refuses a malformed header on the socket with its status code, and logs it', async () => {
    const answer = await withDeadline(
      new Promise<Buffer>((resolve, reject) => {
        const chunks: Buffer[] = [];
        const socket = createConnection({ path: socketPath });
        socket.on('data', (chunk: Buffer) => chunks.push(chunk));
        socket.once('error', reject);
        socket.once('close', () => resolve(Buffer.concat(chunks)));
        socket.end(Buffer.from('KHC\x01\x0dnot a header!', 'latin1'));
      }),
      20_000,
      'the answer to a malformed header',
    );
    expect([...answer]).toEqual([4]);
    await waitUntil(
      () => (/"reason":"bad destination","result":"malformed","msg":"connection refused"/.test(connector.output()) ? true : undefined),
      10_000,
      "the connector's malformed-header line",
    );
  });

  it('carries 8 MiB byte-exact both ways to an echo server in mgmt', async () => {
    const issued = await issue('novnc', echoPort);
    const data = randomBytes(8 * 1024 * 1024);
    const back = createHash('sha256');
    const client = await connectConsole(websocketUrl(issued.token), {
      keepMessages: false,
      onMessage: (chunk) => back.update(chunk),
      timeoutMs: 20_000,
    });
    for (let offset = 0; offset < data.length; offset += 64 * 1024) {
      await client.send(data.subarray(offset, offset + 64 * 1024));
    }
    await client.waitForBytes(data.length, 60_000);
    expect(client.receivedBytes).toBe(data.length);
    expect(back.digest('hex')).toBe(createHash('sha256').update(data).digest('hex'));
    await client.close();
  });

  it('ends a live session through the connector when its token is revoked (1008)', async () => {
    const issued = await issue('novnc', echoPort);
    const client = await connectConsole(websocketUrl(issued.token), { timeoutMs: 20_000 });
    expect((await client.roundTrip('before revocation', 20_000)).toString()).toBe('before revocation');
    const revoked = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/tokens/${issued.id}`, {
      key: deployment.agentKeys.cell1,
    });
    expect(revoked.status).toBe(204);
    expect(await client.waitForClose(10_000)).toMatchObject({ code: 1008, reason: 'token revoked' });
  });

  it('closes with 1011 at once when the connector is stopped (its socket is gone)', async () => {
    await connector.stop(10_000);
    expect(connector.output()).toContain('"msg":"connector stopped"');
    const issued = await issue('novnc', vm.vncPort);
    const started = Date.now();
    const client = await connectConsole(websocketUrl(issued.token));
    const closed = await client.waitForClose(10_000);
    expect(closed).toMatchObject({ code: 1011, reason: 'console unreachable: connector missing' });
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});
