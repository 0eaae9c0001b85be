import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { NetworkLab, Namespace, ROOT, VethLink } from '../support/real/netns';
import { startProcess } from '../support/real/processes';
import { QemuVm, startQemuVm } from '../support/real/qemu';
import { Sshd, startSshd } from '../support/real/sshd';
import { waitUntil } from '../support/wait';

const run = promisify(execFile);
const RFB_BANNER = 'RFB 003.008\n';

/**
 * The network-namespace harness the route tests stand on, proven without keyhole: QEMU listening only
 * inside a `tenant` namespace, Debian's sshd in a `node` namespace that can reach it, and the root
 * namespace (where the proxy runs) with no route to the tenant.
 */
describe('network namespace harness: QEMU and sshd inside namespaces', () => {
  let lab: NetworkLab;
  let tenant: Namespace;
  let node: Namespace;
  let other: Namespace;
  let rootToNode: VethLink;
  let nodeToTenant: VethLink;
  let vm: QemuVm | undefined;
  let sshd: Sshd | undefined;
  const directory = mkdtempSync(join(tmpdir(), 'keyhole-netns-harness-'));

  beforeAll(async () => {
    lab = await NetworkLab.create();
    tenant = await lab.namespace('tenant');
    node = await lab.namespace('node');
    other = await lab.namespace('other');
    rootToNode = await lab.link(ROOT, node);
    nodeToTenant = await lab.link(node, tenant);
    await lab.link(ROOT, other);
    vm = await startQemuVm({ listen: { namespace: tenant.name, address: nodeToTenant.b }, timeoutMs: 60_000 });
    sshd = await startSshd({ namespace: node.name, address: rootToNode.b });
  }, 120_000);

  afterAll(async () => {
    await sshd?.destroy();
    await vm?.stop();
    await lab?.destroy();
    rmSync(directory, { recursive: true, force: true });
  }, 60_000);

  it('QEMU sends its RFB banner inside the tenant namespace, and from the node namespace', async () => {
    for (const place of [tenant, node]) {
      const probe = await lab.probeTcp(place, vm!.host, vm!.vncPort, { readBytes: RFB_BANNER.length, timeoutMs: 5_000 });
      expect(probe).toEqual({ result: 'open', bytes: Buffer.from(RFB_BANNER, 'latin1') });
    }
  }, 60_000);

  it('the root namespace and a namespace without a link to the tenant fail at once: no route, no timeout', async () => {
    for (const place of [ROOT, other] as const) {
      const started = Date.now();
      const probe = await lab.probeTcp(place, vm!.host, vm!.vncPort, { timeoutMs: 10_000 });
      expect(probe.result).toBe('unreachable');
      // The probe's own process start is most of this; a timeout would be 10 s.
      expect(Date.now() - started).toBeLessThan(8_000);
    }
  }, 60_000);

  it("sshd in the node namespace serves its own host key, accepts the test's client key, and reaches the tenant", async () => {
    const { stdout: scanned } = await run('ssh-keyscan', ['-T', '10', '-t', 'ed25519', '-p', String(sshd!.port), sshd!.host]);
    const keyFile = join(directory, 'scanned.pub');
    writeFileSync(keyFile, scanned);
    const { stdout: fingerprint } = await run('ssh-keygen', ['-l', '-f', keyFile]);
    expect(fingerprint).toContain(sshd!.hostKeyFingerprint);

    const { stdout } = await run('ssh', [
      ...clientOptions(sshd!),
      `${sshd!.user}@${sshd!.host}`,
      `nc -z -w 5 ${vm!.host} ${vm!.vncPort} && echo tenant-reachable`,
    ]);
    expect(stdout.trim()).toBe('tenant-reachable');
  }, 60_000);

  it('counts the SSH connections at the node, and serves again after a restart that dropped them', async () => {
    const client = await startProcess('ssh', [...clientOptions(sshd!), `${sshd!.user}@${sshd!.host}`, 'sleep 60']);
    try {
      await waitUntil(
        async () => ((await sshd!.establishedConnections()) === 1 ? true : undefined),
        20_000,
        'one SSH connection at the node',
      );
      await sshd!.restart();
      await client.exited;
      expect(await sshd!.establishedConnections()).toBe(0);
    } finally {
      await client.stop();
    }
    const { stdout } = await run('ssh', [...clientOptions(sshd!), `${sshd!.user}@${sshd!.host}`, 'echo again']);
    expect(stdout.trim()).toBe('again');
  }, 60_000);
});

function clientOptions(sshd: Sshd): string[] {
  return [
    '-i',
    sshd.clientKeyPath,
    '-p',
    String(sshd.port),
    '-o',
    'BatchMode=yes',
    '-o',
    'StrictHostKeyChecking=no',
    '-o',
    'UserKnownHostsFile=/dev/null',
    '-o',
    'ConnectTimeout=15',
    '-o',
    'LogLevel=ERROR',
  ];
}
