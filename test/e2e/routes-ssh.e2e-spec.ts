/// <reference lib="dom" />
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CellsService } from '@keyhole/cells';
import { SessionRow } from '../support/databases';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { ProxyProcess, startProxyProcess } from '../support/proxy-process';
import { Browser, launchBrowser, waitForVncScreen } from '../support/real/browser';
import { Namespace, NetworkLab, ROOT, VethLink } from '../support/real/netns';
import { ManagedProcess, waitForOutput } from '../support/real/processes';
import { QemuVm, startQemuVm } from '../support/real/qemu';
import { Sshd, startSshd } from '../support/real/sshd';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';
import { ConsoleClient, connectConsole, expectPolicyClose, expectRefusedUpgrade, terminateAllClients } from '../support/websocket-client';
import { endedSessionOf, sessionRowsOf } from './helpers';

/*
 * Consoles on a network the proxy has no route to, reached through SSH proxy nodes (Debian's sshd,
 * started here with its own keys), every party in a network namespace of its own:
 *
 *   root (proxy, API) --veth-- node (sshd forward :A, sshd without forwarding :B) --veth-- tenant (QEMU, echo, source, CONNECT proxy)
 *                                 \--veth-- node2 (sshd :C) --veth-- tenant
 *
 * The root namespace reaches the node only; the tenant and node2 are behind it. The compiled proxy
 * runs as its own process (its whole output is read for the key), the token API in this one.
 */

jest.setTimeout(60_000);

const MiB = 1024 * 1024;
const ECHO_PORT = 7000;
const SOURCE_PORT = 7001;
const NC_ECHO_PORT = 7002;
/** Ports the routes send through a node that refuses them (or with a wrong host key); nothing listens there. */
const NO_FORWARDING_PORT = 7003;
const WRONG_HOST_KEY_PORT = 7004;
const WRONG_KEY_PORT = 7005;
const SILENT_NODE_PORT = 7006;
/** An HTTP CONNECT proxy in the tenant in front of QEMU's VNC, for tokens with an internal_access_path. */
const CONNECT_PROXY_PORT = 7007;
const CONNECT_PATH = 'vm-through-node';
/** A "node" in the node namespace that accepts TCP and never says a word of SSH. */
const SILENT_SSH_PORT = 2200;
const SERVICE_SCRIPT = join(__dirname, '../support/real/tcp-service.cjs');
const ECHO_SCRIPT = join(__dirname, '../support/real/tcp-echo.cjs');
const CONNECT_PROXY_SCRIPT = join(__dirname, '../support/real/connect-proxy.cjs');
const KEY_VARIABLES = { forward: 'KEYHOLE_TEST_SSH_KEY_FORWARD', nc: 'KEYHOLE_TEST_SSH_KEY_NC', node2: 'KEYHOLE_TEST_SSH_KEY_NODE2' };

let lab: NetworkLab;
let node: Namespace;
let tenant: Namespace;
let rootToNode: VethLink;
let nodeToTenant: VethLink;
let node2ToTenant: VethLink;
let nodeToNode2: VethLink;
let vm: QemuVm;
let forwardNode: Sshd;
let ncNode: Sshd;
let node2: Sshd;
let source: ManagedProcess;
let connectProxy: ManagedProcess;
let deployment: TestDeployment;
let proxy: ProxyProcess;
let browser: Browser | undefined;
const directory = mkdtempSync(join(tmpdir(), 'keyhole-routes-ssh-'));
const routesFile = join(directory, 'routes.yaml');

function sshVia(sshd: Sshd, host: string, variable: string, extra: string[] = []): string {
  return [
    '    via:',
    '      ssh:',
    `        host: ${host}`,
    `        port: ${sshd.port}`,
    `        user: ${sshd.user}`,
    `        key: env:${variable}`,
    `        hostKey: "${sshd.hostKeyFingerprint}"`,
    ...extra.map((line) => `        ${line}`),
  ].join('\n');
}

/** The routes of this test; without `ncNode`, the routes through the node without forwarding are gone. */
function routesYaml({ ncNode: withNcNode = true }: { ncNode?: boolean } = {}): string {
  const wrongHostKey = `SHA256:${createHash('sha256').update('not the node').digest('base64').replace(/=+$/, '')}`;
  return [
    'routes:',
    '  - name: tenant',
    `    match: { cidr: ${nodeToTenant.cidr}, ports: "${vm.vncPort},${vm.serialPort},${ECHO_PORT},${SOURCE_PORT},${CONNECT_PROXY_PORT}" }`,
    sshVia(forwardNode, rootToNode.b, KEY_VARIABLES.forward),
    ...(withNcNode
      ? [
          '  - name: tenant-nc',
          `    match: { cidr: ${nodeToTenant.cidr}, ports: "${NC_ECHO_PORT}" }`,
          sshVia(ncNode, rootToNode.b, KEY_VARIABLES.nc, ['mode: nc']),
          '  - name: no-forwarding',
          `    match: { cidr: ${nodeToTenant.cidr}, ports: "${NO_FORWARDING_PORT}" }`,
          sshVia(ncNode, rootToNode.b, KEY_VARIABLES.nc, ['mode: forward']),
        ]
      : []),
    '  - name: impostor',
    `    match: { cidr: ${nodeToTenant.cidr}, ports: "${WRONG_HOST_KEY_PORT}" }`,
    sshVia(forwardNode, rootToNode.b, KEY_VARIABLES.forward).replace(forwardNode.hostKeyFingerprint, wrongHostKey),
    '  - name: wrong-key',
    `    match: { cidr: ${nodeToTenant.cidr}, ports: "${WRONG_KEY_PORT}" }`,
    sshVia(forwardNode, rootToNode.b, KEY_VARIABLES.nc),
    '  - name: silent-node',
    `    match: { cidr: ${nodeToTenant.cidr}, ports: "${SILENT_NODE_PORT}" }`,
    sshVia(forwardNode, rootToNode.b, KEY_VARIABLES.forward).replace(`port: ${forwardNode.port}`, `port: ${SILENT_SSH_PORT}`),
    '  - name: node2-jump',
    `    match: { cidr: ${nodeToNode2.cidr}, ports: "${node2.port}" }`,
    sshVia(forwardNode, rootToNode.b, KEY_VARIABLES.forward),
    '  - name: tenant-chain',
    `    match: { cidr: ${node2ToTenant.cidr}, ports: "${ECHO_PORT}" }`,
    sshVia(node2, nodeToNode2.b, KEY_VARIABLES.node2, ['through: node2-jump']),
    '',
  ].join('\n');
}

async function issue(
  host: string,
  port: number,
  { consoleType = 'novnc', internalAccessPath }: { consoleType?: 'novnc' | 'serial'; internalAccessPath?: string } = {},
) {
  const response = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
    key: deployment.agentKeys.cell1,
    body: { instanceUuid: randomUUID(), consoleType, host, port, internalAccessPath },
  });
  expect(response.status).toBe(201);
  return response.body as { id: number; token: string; accessUrl: string };
}

const websocketUrl = (token: string): string => `${proxy.wsBase}/websockify?token=${encodeURIComponent(token)}`;

function connect(token: string, options: Parameters<typeof connectConsole>[1] = {}): Promise<ConsoleClient> {
  return connectConsole(websocketUrl(token), { timeoutMs: 20_000, ...options });
}

async function open(host: string, port: number, options: Parameters<typeof connectConsole>[1] = {}): Promise<ConsoleClient> {
  return connect((await issue(host, port)).token, options);
}

const sessionRows = (tokenId: number): Promise<SessionRow[]> => sessionRowsOf(deployment.cellUrls.cell1, tokenId);
const endedSession = (tokenId: number): Promise<SessionRow> => endedSessionOf(deployment.cellUrls.cell1, tokenId, 20_000);

async function proxyMetric(name: string, labels: Record<string, string>): Promise<number | undefined> {
  return metricValue(await scrapeMetrics(`http://127.0.0.1:${proxy.port}`), name, labels);
}

function rssBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(match![1]) * 1024;
}

/** Sends `size` random bytes through the echo console at `host:port` and checks that exactly they come back. */
async function echoExactly(host: string, port: number, size: number): Promise<void> {
  const payload = randomBytes(size);
  const received = createHash('sha256');
  const client = await open(host, port, { keepMessages: false, onMessage: (chunk) => received.update(chunk) });
  await client.sendInRandomChunks(payload);
  await client.waitForBytes(size, 60_000);
  expect(client.receivedBytes).toBe(size);
  expect(received.digest('hex')).toBe(createHash('sha256').update(payload).digest('hex'));
  await client.close();
}

/**
 * Resets the VM until SeaBIOS's banner arrives on `client`, a serial session through the node. QEMU
 * attaches the next serial client only once it has seen the previous one go, and what the guest
 * prints before that is lost: so a reset that came too early is tried again.
 */
async function expectBiosOnSerial(client: ConsoleClient): Promise<void> {
  await vm.waitForSerialClient({ timeoutMs: 20_000 });
  await waitUntil(
    async () => {
      const from = client.receivedBytes;
      await vm.reset({ timeoutMs: 30_000 });
      return waitUntil(() => (/SeaBIOS/.test(client.received().subarray(from).toString('latin1')) ? true : undefined), 5_000, 'the banner');
    },
    90_000,
    "SeaBIOS's banner on the serial console through the node",
    { retryErrors: true },
  );
}

beforeAll(async () => {
  lab = await NetworkLab.create();
  node = await lab.namespace('node');
  tenant = await lab.namespace('tenant');
  const nodeTwo = await lab.namespace('node2');
  rootToNode = await lab.link(ROOT, node);
  nodeToTenant = await lab.link(node, tenant);
  nodeToNode2 = await lab.link(node, nodeTwo);
  node2ToTenant = await lab.link(nodeTwo, tenant);

  [vm, forwardNode, ncNode, node2] = await Promise.all([
    startQemuVm({ listen: { namespace: tenant.name, address: nodeToTenant.b }, timeoutMs: 60_000 }),
    startSshd({ namespace: node.name, address: rootToNode.b, timeoutMs: 30_000 }),
    startSshd({ namespace: node.name, address: rootToNode.b, allowTcpForwarding: false, timeoutMs: 30_000 }),
    startSshd({ namespace: nodeTwo.name, address: nodeToNode2.b, timeoutMs: 30_000 }),
  ]);
  const echo = await lab.start(tenant, process.execPath, [ECHO_SCRIPT, '0.0.0.0', String(ECHO_PORT)]);
  const ncEcho = await lab.start(tenant, process.execPath, [ECHO_SCRIPT, '0.0.0.0', String(NC_ECHO_PORT)]);
  source = await lab.start(tenant, process.execPath, [SERVICE_SCRIPT, '0.0.0.0', String(SOURCE_PORT), 'source']);
  connectProxy = await lab.start(tenant, process.execPath, [
    CONNECT_PROXY_SCRIPT,
    '0.0.0.0',
    String(CONNECT_PROXY_PORT),
    CONNECT_PATH,
    vm.host,
    String(vm.vncPort),
  ]);
  const silent = await lab.start(node, process.execPath, [SERVICE_SCRIPT, rootToNode.b, String(SILENT_SSH_PORT), 'silent']);
  await Promise.all([echo, ncEcho, source, connectProxy, silent].map((service) => waitForOutput(service, /listening/, 20_000)));

  writeFileSync(routesFile, routesYaml());
  const keys = {
    [KEY_VARIABLES.forward]: forwardNode.clientPrivateKey,
    [KEY_VARIABLES.nc]: ncNode.clientPrivateKey,
    [KEY_VARIABLES.node2]: node2.clientPrivateKey,
  };
  // The API checks the same routes file in this process, without the keys: it never holds one.
  deployment = await startTestDeployment({ environment: { KEYHOLE_ROUTES_FILE: routesFile } });
  proxy = await startProxyProcess(
    {
      KEYHOLE_CELL_NAME: 'cell1',
      KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
      KEYHOLE_ROUTES_FILE: routesFile,
      KEYHOLE_PROXY_DRAIN_GRACE_MS: '3000',
      ...keys,
    },
    30_000,
  );
  await deployment.api.app.get(CellsService).updateProxyUrl('cell1', `http://127.0.0.1:${proxy.port}`);
}, 180_000);

afterEach(() => terminateAllClients());

afterAll(async () => {
  terminateAllClients();
  await browser?.close();
  await proxy?.stop();
  await deployment?.stop();
  await Promise.all([vm?.stop(), forwardNode?.destroy(), ncNode?.destroy(), node2?.destroy()]);
  await lab?.destroy();
  rmSync(directory, { recursive: true, force: true });
}, 60_000);

describe('consoles through SSH proxy nodes', () => {
  it('the proxy has no route to the tenant: a direct connect fails at once, it does not time out', async () => {
    const started = Date.now();
    const probe = await lab.probeTcp(ROOT, vm.host, vm.vncPort, { timeoutMs: 10_000 });
    expect(probe.result).toBe('unreachable');
    expect(Date.now() - started).toBeLessThan(8_000);
    // While the node reaches it.
    expect((await lab.probeTcp(node, vm.host, vm.vncPort, { readBytes: 12 })).result).toBe('open');
  });

  it("noVNC in Chromium, opened with the issued access URL, shows the VM's screen through the node", async () => {
    browser = await launchBrowser();
    const issued = await issue(vm.host, vm.vncPort);
    const page = await browser.page();
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(issued.accessUrl);
    // SeaBIOS draws its banner: wait until noVNC is connected and the canvas is not blank.
    expect(await waitForVncScreen(page, 30_000)).toBeGreaterThan(0.001);
    expect(errors).toEqual([]);
    await page.close();
  }, 90_000);

  it('20 concurrent consoles share one SSH connection to the node, a channel each', async () => {
    const clients = await Promise.all(Array.from({ length: 20 }, () => open(nodeToTenant.b, ECHO_PORT)));
    const answers = await Promise.all(clients.map((client, index) => client.roundTrip(`console ${index}`, 20_000)));
    expect(answers.map(String)).toEqual(clients.map((_client, index) => `console ${index}`));
    expect(await forwardNode.establishedConnections()).toBe(1);
    expect(await proxyMetric('keyhole_proxy_ssh_node_connections', { node: 'tenant' })).toBe(1);
    expect(await proxyMetric('keyhole_proxy_ssh_node_handshakes_total', { node: 'tenant', result: 'ok' })).toBe(1);
    await Promise.all(clients.map((client) => client.close()));
  });

  it('mode nc reaches the console through a node with AllowTcpForwarding no, where forward is refused', async () => {
    const client = await open(nodeToTenant.b, NC_ECHO_PORT);
    expect((await client.roundTrip('through nc', 20_000)).toString()).toBe('through nc');
    await client.close();

    const refused = await open(nodeToTenant.b, NO_FORWARDING_PORT);
    expect(await refused.waitForClose(20_000)).toMatchObject({ code: 1011, reason: 'console unreachable: ssh channel refused' });
  });

  it('a node that accepts TCP and never answers closes the console within the connect timeout, not never', async () => {
    const started = Date.now();
    const client = await open(nodeToTenant.b, SILENT_NODE_PORT);
    expect(await client.waitForClose(30_000)).toMatchObject({ code: 1011, reason: 'console unreachable: connect timeout' });
    // The proxy's connect timeout is 5 s by default; the handshake's own bound (15 s) is not what ends it.
    expect(Date.now() - started).toBeLessThan(12_000);
  });

  it('refuses a key the node does not accept', async () => {
    const client = await open(nodeToTenant.b, WRONG_KEY_PORT);
    expect(await client.waitForClose(20_000)).toMatchObject({ code: 1011, reason: 'console unreachable: ssh auth failed' });
  });

  it('refuses a node whose host key is not the pinned one, and logs both fingerprints', async () => {
    const client = await open(nodeToTenant.b, WRONG_HOST_KEY_PORT);
    expect(await client.waitForClose(20_000)).toMatchObject({ code: 1011, reason: 'console unreachable: ssh host key mismatch' });
    // Log lines are flushed in batches.
    const line = await waitUntil(
      () =>
        proxy
          .output()
          .split('\n')
          .find((entry) => entry.includes('"presented"')),
      10_000,
      'the host key mismatch in the log',
    );
    expect(JSON.parse(line)).toMatchObject({ node: 'impostor', presented: forwardNode.hostKeyFingerprint });
    expect(await proxyMetric('keyhole_proxy_ssh_node_handshakes_total', { node: 'impostor', result: 'host_key_mismatch' })).toBe(1);
  });

  it('reaches a console through a chain of two nodes (through)', async () => {
    const client = await open(node2ToTenant.b, ECHO_PORT);
    expect((await client.roundTrip('two hops', 20_000)).toString()).toBe('two hops');
    // node2 sees one SSH connection (from the first node, not from the proxy), and the first node still one.
    expect(await node2.establishedConnections()).toBe(1);
    expect(await forwardNode.establishedConnections()).toBe(1);
    await client.close();
  });

  it('ends a live session through the node when its token is revoked through the token API (1008)', async () => {
    const issued = await issue(nodeToTenant.b, ECHO_PORT);
    const client = await connect(issued.token);
    expect((await client.roundTrip('before revocation', 20_000)).toString()).toBe('before revocation');
    const revokedAt = Date.now();
    const revoked = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/tokens/${issued.id}`, {
      key: deployment.agentKeys.cell1,
    });
    expect(revoked.status).toBe(204);
    expectPolicyClose(await client.waitForClose(10_000), 'token revoked', { since: revokedAt, withinMs: 3_000 });
    expect((await endedSession(issued.id)).close_reason).toBe('token revoked');
  });

  it("keeps QEMU's serial port exclusive through the node: a second session is refused with 409 while the first is open, and works after", async () => {
    const first = await issue(vm.host, vm.serialPort, { consoleType: 'serial' });
    const second = await issue(vm.host, vm.serialPort, { consoleType: 'serial' });
    const firstClient = await connect(first.token);
    await expectBiosOnSerial(firstClient);

    const refused = await expectRefusedUpgrade(websocketUrl(second.token), { timeoutMs: 20_000 });
    expect(refused.status).toBe(409);
    expect(refused.body).toMatch(/console busy/);
    // The refusal did not disturb the session that holds the port.
    expect(firstClient.isOpen).toBe(true);
    expect((await sessionRows(second.id)).filter((row) => row.ended_at === null)).toEqual([]);

    await firstClient.close();
    await endedSession(first.id);
    const secondClient = await connect(second.token);
    await expectBiosOnSerial(secondClient);
    await secondClient.close();
  }, 180_000);

  it("speaks HTTP CONNECT for an internal_access_path through the node, and the console's bytes sent with the 200 arrive exactly", async () => {
    const issued = await issue(nodeToTenant.b, CONNECT_PROXY_PORT, { internalAccessPath: CONNECT_PATH });
    const client = await connect(issued.token);
    // The CONNECT proxy sent "HTTP/1.1 200 ...\r\n\r\n" and QEMU's banner in one write: only the banner is the console's.
    expect((await client.waitForBytes(12, 20_000)).toString('latin1')).toBe('RFB 003.008\n');
    expect(connectProxy.output()).toContain(`request CONNECT ${CONNECT_PATH} HTTP/1.1`);
    // The stream goes on both ways as the console's: QEMU answers the client's version with its
    // security types (one: None), and nothing of the HTTP answer is in between.
    await client.send('RFB 003.008\n');
    await client.waitForBytes(14, 20_000);
    expect(client.received()).toEqual(Buffer.concat([Buffer.from('RFB 003.008\n', 'latin1'), Buffer.from([1, 1])]));
    await client.close();
  });

  it('names the route in the session record and counts the connect in the per-route metrics', async () => {
    const connects = async () => (await proxyMetric('keyhole_proxy_route_connects_total', { route: 'tenant', result: 'ok' })) ?? 0;
    const timed = async () => (await proxyMetric('keyhole_proxy_route_connect_seconds_count', { route: 'tenant' })) ?? 0;
    const [connectsBefore, timedBefore] = [await connects(), await timed()];
    const issued = await issue(nodeToTenant.b, ECHO_PORT);
    const client = await connect(issued.token);
    expect((await client.roundTrip('recorded', 20_000)).toString()).toBe('recorded');
    await client.close();
    expect(await endedSession(issued.id)).toMatchObject({
      route: 'tenant',
      host: nodeToTenant.b,
      port: ECHO_PORT,
      close_reason: 'client closed',
    });
    expect(await connects()).toBe(connectsBefore + 1);
    // And timed under the same label.
    expect(await timed()).toBe(timedBefore + 1);
  });

  it.each([
    ['forward', () => nodeToTenant.b, ECHO_PORT],
    ['nc', () => nodeToTenant.b, NC_ECHO_PORT],
    ['a chain', () => node2ToTenant.b, ECHO_PORT],
  ] as const)(
    'carries 8 MiB each way byte-exact through %s',
    async (_name, host, port) => {
      await echoExactly(host(), port, 8 * MiB);
    },
    120_000,
  );

  it("holds a bounded amount for a browser that stops reading: the console's writes block, the proxy's memory does not grow", async () => {
    const writtenNow = (): number => Number([...source.output().matchAll(/written (\d+)/g)].pop()?.[1] ?? 0);
    const client = await open(nodeToTenant.b, SOURCE_PORT, { keepMessages: false });
    await client.waitForBytes(4 * MiB, 30_000);
    const baseline = rssBytes(proxy.child.pid!);
    (client.ws as any)._socket.pause();
    // Blocked: the source's total stops moving (it prints it every 200 ms when it changed).
    let last = -1;
    let stableSince = Date.now();
    await waitUntil(
      () => {
        const written = writtenNow();
        if (written !== last) {
          last = written;
          stableSince = Date.now();
        }
        return Date.now() - stableSince >= 2_000 ? true : undefined;
      },
      30_000,
      'the console to be blocked by backpressure',
    );
    const blockedAt = writtenNow();
    expect(rssBytes(proxy.child.pid!) - baseline).toBeLessThan(64 * MiB);
    // Unread bytes sit in kernel buffers, SSH windows and a bounded queue: nowhere near what was offered.
    expect(blockedAt - client.receivedBytes).toBeLessThan(64 * MiB);

    (client.ws as any)._socket.resume();
    await client.waitForBytes(blockedAt + 8 * MiB, 60_000);
    await client.close();
  }, 120_000);

  it('while the node is down a connect fails at once with 1011; after it restarts, the next console connect works', async () => {
    const before = await open(nodeToTenant.b, ECHO_PORT);
    expect((await before.roundTrip('before', 20_000)).toString()).toBe('before');
    await forwardNode.stop();
    // The session on the old connection ends; it is not left hanging.
    expect((await before.waitForClose(30_000)).code).toBe(1000);

    const started = Date.now();
    const down = await open(nodeToTenant.b, ECHO_PORT);
    expect(await down.waitForClose(20_000)).toMatchObject({ code: 1011, reason: 'console unreachable: ssh node unreachable' });
    expect(Date.now() - started).toBeLessThan(10_000);

    await forwardNode.restart();

    const after = await open(nodeToTenant.b, ECHO_PORT);
    expect((await after.roundTrip('after', 20_000)).toString()).toBe('after');
    expect(await forwardNode.establishedConnections()).toBe(1);
    await after.close();
  }, 90_000);

  it('SIGHUP reloads the routes: live sessions go on, unchanged nodes keep their connection, removed ones close once idle', async () => {
    const live = await open(nodeToTenant.b, ECHO_PORT);
    expect((await live.roundTrip('before reload', 20_000)).toString()).toBe('before reload');
    const liveNc = await open(nodeToTenant.b, NC_ECHO_PORT);
    expect((await liveNc.roundTrip('nc before reload', 20_000)).toString()).toBe('nc before reload');
    expect(await ncNode.establishedConnections()).toBe(1);
    writeFileSync(routesFile, routesYaml({ ncNode: false }));
    const handshakes = await proxyMetric('keyhole_proxy_ssh_node_handshakes_total', { node: 'tenant', result: 'ok' });
    const reloaded = () =>
      proxy
        .output()
        .split('\n')
        .filter((line) => line.includes('"msg":"routes reloaded"')).length;
    const count = reloaded();
    proxy.child.kill('SIGHUP');
    await waitUntil(() => (reloaded() > count ? true : undefined), 20_000, 'the proxy to reload its routes');
    expect((await live.roundTrip('after reload', 20_000)).toString()).toBe('after reload');
    // The node no route uses any more keeps serving its live session, and closes after it.
    expect((await liveNc.roundTrip('nc after reload', 20_000)).toString()).toBe('nc after reload');
    expect(await ncNode.establishedConnections()).toBe(1);
    await liveNc.close();
    await waitUntil(
      async () => ((await ncNode.establishedConnections()) === 0 ? true : undefined),
      10_000,
      'the removed node to be closed',
    );
    const next = await open(nodeToTenant.b, ECHO_PORT);
    expect((await next.roundTrip('new session', 20_000)).toString()).toBe('new session');
    expect(await proxyMetric('keyhole_proxy_ssh_node_handshakes_total', { node: 'tenant', result: 'ok' })).toBe(handshakes);
    expect(await forwardNode.establishedConnections()).toBe(1);
    await Promise.all([live.close(), next.close()]);
  });

  it('the private keys appear in no log line of the proxy or the API, and in no file in its directory', () => {
    const written = [
      proxy.output(),
      deployment.api.logs(),
      ...readdirSync(directory).map((file) => readFileSync(join(directory, file), 'utf8')),
    ].join('\n');
    expect(written).toContain('ssh proxy node connected');
    for (const sshd of [forwardNode, ncNode, node2]) {
      // Any 40 characters of the key's body would do; the whole body and each of its lines are looked for.
      const lines = sshd.clientPrivateKey.split('\n').filter((line) => line && !line.startsWith('-----'));
      for (const needle of [sshd.clientKeyBody, ...lines]) {
        expect(written.includes(needle)).toBe(false);
      }
    }
    expect(written).not.toContain('PRIVATE KEY');
  });

  it('on SIGTERM, drains a session through a node (it goes on for the grace period), then closes the node connection', async () => {
    const client = await open(nodeToTenant.b, ECHO_PORT);
    expect((await client.roundTrip('last', 20_000)).toString()).toBe('last');
    expect(await forwardNode.establishedConnections()).toBe(1);
    proxy.child.kill('SIGTERM');
    await waitUntil(() => (proxy.output().includes('"msg":"draining console sessions"') ? true : undefined), 10_000, 'the drain to start');
    expect((await client.roundTrip('while draining', 20_000)).toString()).toBe('while draining');
    expect((await client.waitForClose(30_000)).code).toBe(1001);
    // Nest re-raises the signal once the app has closed.
    expect([0, 'SIGTERM']).toContain(await proxy.exited);
    // Closed by the proxy (an SSH disconnect), not only by the kernel when the process went away.
    await waitUntil(
      () => (/Received disconnect from/.test(forwardNode.output()) ? true : undefined),
      10_000,
      () => `an SSH disconnect from the proxy in sshd's log:\n${forwardNode.output()}`,
    );
    await waitUntil(
      async () => ((await forwardNode.establishedConnections()) === 0 ? true : undefined),
      10_000,
      'the node connection to close',
    );
  });
});
