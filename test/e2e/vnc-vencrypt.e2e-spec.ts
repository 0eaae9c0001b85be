import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CellsService } from '@keyhole/cells';
import { TestCertificateAuthority } from '../support/certificates';
import { RunningProxy, startCell1Proxy } from '../support/console-proxy';
import { queryDatabase } from '../support/databases';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { artifactsDir, Browser, launchBrowser, waitForVncScreen } from '../support/real/browser';
import { startQemuVm } from '../support/real/qemu';
import { startTcpUpstream } from '../support/tcp-upstreams';
import { stopAfterTests, Teardown } from '../support/teardown';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';
import { ConsoleClient, connectConsole } from '../support/websocket-client';

const INSTANCE = '5f0c3a1e-7d2b-4c6a-9e8f-1a2b3c4d5e6f';
const RFB_3_8 = Buffer.from('RFB 003.008\n', 'latin1');
/** The whole negotiation's bound in these tests (KEYHOLE_PROXY_CONNECT_TIMEOUT_MS). */
const NEGOTIATION_TIMEOUT_MS = 2_000;

/**
 * A scripted hypervisor: sends `banner`, then for each step waits for `read` bytes from the proxy
 * and answers `reply`. After the last step it stays silent.
 */
function scriptedHypervisor(steps: { read: number; reply?: number[] }[], banner: Buffer = RFB_3_8) {
  return (socket: Socket): void => {
    socket.write(banner);
    let buffered = Buffer.alloc(0);
    let step = 0;
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (step < steps.length && buffered.length >= (steps[step]?.read ?? 0)) {
        const { read, reply } = steps[step];
        buffered = buffered.subarray(read);
        if (reply) {
          socket.write(Buffer.from(reply));
        }
        step += 1;
      }
    });
  };
}

/** A u32 in network order, as bytes. */
const u32 = (value: number): number[] => [(value >>> 24) & 255, (value >>> 16) & 255, (value >>> 8) & 255, value & 255];

/**
 * VeNCrypt to the hypervisor, as nova-novncproxy does with `[vnc] auth_schemes = vencrypt`: QEMU
 * serves VNC only over VeNCrypt x509 and requires a client certificate (verify-peer=on); keyhole's
 * proxy does the TLS with the hypervisor itself and offers the browser security type None, so noVNC
 * in Chromium shows the screen without any certificate. Certificates are made here with openssl.
 * Refused: a proxy trusting another CA, a proxy without a client certificate, a plain hypervisor
 * when only vencrypt is allowed, and a browser choosing a security type other than None.
 */
describe('VNC over VeNCrypt to the hypervisor', () => {
  const teardown = new Teardown();
  stopAfterTests(teardown);
  let deployment: TestDeployment;
  let vencryptVm: { host: string; vncPort: number };
  let plainVm: { vncPort: number };
  /** vencrypt only, trusting the hypervisors' CA, with a client certificate. */
  let proxy: RunningProxy;
  /** vencrypt only, trusting another CA. */
  let wrongCaProxy: RunningProxy;
  /** vencrypt then none, without a client certificate. */
  let noClientCertificateProxy: RunningProxy;
  let browser: Browser;
  /** The CA file of `wrongCaProxy` (a copy the SIGHUP test rewrites), and the right CA's. */
  let wrongCaFile: string;
  let rightCaFile: string;

  beforeAll(async () => {
    const ca = teardown.add(await TestCertificateAuthority.create('vnc-ca'), (authority) => authority.remove());
    const otherCa = teardown.add(await TestCertificateAuthority.create('other-ca'), (authority) => authority.remove());
    const server = await ca.issueServer('hypervisor');
    const client = await ca.issue('keyhole-proxy', { commonName: 'keyhole-proxy', usage: 'client' });
    // QEMU's tls-creds-x509 reads fixed names from one directory.
    const qemuTls = await mkdtemp(join(tmpdir(), 'keyhole-qemu-tls-'));
    teardown.add(qemuTls, (directory) => rm(directory, { recursive: true, force: true }));
    await copyFile(ca.ca.certFile, join(qemuTls, 'ca-cert.pem'));
    await copyFile(server.certFile, join(qemuTls, 'server-cert.pem'));
    await copyFile(server.keyFile, join(qemuTls, 'server-key.pem'));
    wrongCaFile = join(qemuTls, 'proxy-ca.pem');
    await copyFile(otherCa.ca.certFile, wrongCaFile);
    rightCaFile = ca.ca.certFile;

    deployment = teardown.add(await startTestDeployment(), (started) => started.stop());
    vencryptVm = teardown.add(await startQemuVm({ vncTls: { directory: qemuTls } }), (vm) => vm.stop());
    plainVm = teardown.add(await startQemuVm(), (vm) => vm.stop());
    const vencryptProxy = (name: string, environment: Record<string, string>) =>
      startCell1Proxy(deployment, {
        KEYHOLE_PROXY_INSTANCE: name,
        KEYHOLE_PROXY_VNC_AUTH_SCHEMES: 'vencrypt',
        KEYHOLE_PROXY_CONNECT_TIMEOUT_MS: String(NEGOTIATION_TIMEOUT_MS),
        ...environment,
      });
    proxy = teardown.add(
      await vencryptProxy('vencrypt', {
        KEYHOLE_PROXY_VENCRYPT_CA_FILE: ca.ca.certFile,
        KEYHOLE_PROXY_VENCRYPT_CLIENT_CERT_FILE: client.certFile,
        KEYHOLE_PROXY_VENCRYPT_CLIENT_KEY_FILE: client.keyFile,
      }),
    );
    wrongCaProxy = teardown.add(
      await vencryptProxy('wrong-ca', {
        KEYHOLE_PROXY_VENCRYPT_CA_FILE: wrongCaFile,
        KEYHOLE_PROXY_VENCRYPT_CLIENT_CERT_FILE: client.certFile,
        KEYHOLE_PROXY_VENCRYPT_CLIENT_KEY_FILE: client.keyFile,
      }),
    );
    noClientCertificateProxy = teardown.add(
      await vencryptProxy('no-client-certificate', {
        KEYHOLE_PROXY_VNC_AUTH_SCHEMES: 'vencrypt,none',
        KEYHOLE_PROXY_VENCRYPT_CA_FILE: ca.ca.certFile,
      }),
    );
    // Access URLs point at the proxy that can reach the VeNCrypt hypervisor.
    await deployment.api.app.get(CellsService).updateProxyUrl('cell1', proxy.httpBase);
    browser = teardown.add(await launchBrowser());
  }, 120_000);

  const issue = async (port: number) => {
    const response = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: deployment.agentKeys.cell1,
      body: { instanceUuid: INSTANCE, consoleType: 'novnc', host: '127.0.0.1', port },
    });
    expect(response.status).toBe(201);
    return response.body as { id: number; token: string; accessUrl: string };
  };

  const open = async (target: RunningProxy, port: number) => {
    const issued = await issue(port);
    return { issued, client: await connectConsole(`${target.wsBase}/websockify?token=${issued.token}`, { protocols: ['binary'] }) };
  };

  /** Reads exactly the next `length` bytes the browser side was sent. */
  const next = async (client: ConsoleClient, consumed: { bytes: number }, length: number): Promise<Buffer> => {
    const all = await client.waitForBytes(consumed.bytes + length);
    const bytes = all.subarray(consumed.bytes, consumed.bytes + length);
    consumed.bytes += length;
    return bytes;
  };

  /** RFB 3.8 as a browser speaks it, up to the proxy's security types (it offers [None] only). */
  const handshakeToSecurityTypes = async (client: ConsoleClient, consumed: { bytes: number }) => {
    expect(await next(client, consumed, 12)).toEqual(RFB_3_8);
    await client.send(RFB_3_8);
    return next(client, consumed, 2);
  };

  /** The failure an RFB 3.8 SecurityResult carries: status 1, then a u32 length and the reason. */
  const expectFailedSecurityResult = async (client: ConsoleClient, consumed: { bytes: number }, reason: string) => {
    expect((await next(client, consumed, 4)).readUInt32BE(0)).toBe(1);
    const length = (await next(client, consumed, 4)).readUInt32BE(0);
    expect((await next(client, consumed, length)).toString('latin1')).toBe(reason);
  };

  const allLogs = () =>
    [deployment.api.logs(), ...[proxy, wrongCaProxy, noClientCertificateProxy].map((started) => started.logs())].join('\n');

  const endedSession = (tokenId: number) =>
    waitUntil(
      async () =>
        (
          await queryDatabase(
            deployment.cellUrls.cell1,
            'SELECT close_reason FROM console_sessions WHERE token_id = $1 AND ended_at IS NOT NULL',
            [tokenId],
          )
        )[0],
      5_000,
      'the end of the session to be recorded',
      { intervalMs: 50 },
    );

  it('presents RFB 3.8 with security type None to the browser, relays the SecurityResult, then pumps the TLS stream', async () => {
    const { issued, client } = await open(proxy, vencryptVm.vncPort);
    const consumed = { bytes: 0 };
    // QEMU's version, relayed; then the proxy's own list: one type, None.
    expect(await handshakeToSecurityTypes(client, consumed)).toEqual(Buffer.from([1, 1]));
    await client.send(Buffer.from([1]));
    // QEMU's SecurityResult (sent inside TLS), relayed: OK.
    expect(await next(client, consumed, 4)).toEqual(Buffer.from([0, 0, 0, 0]));
    // ClientInit (shared), then QEMU's ServerInit through the TLS stream: the VGA screen's size.
    await client.send(Buffer.from([1]));
    const serverInit = await next(client, consumed, 24);
    expect(serverInit.readUInt16BE(0)).toBeGreaterThanOrEqual(320);
    expect(serverInit.readUInt16BE(2)).toBeGreaterThanOrEqual(200);
    const name = await next(client, consumed, serverInit.readUInt32BE(20));
    expect(name.toString('utf8')).toBe('QEMU (keyhole-test)');
    await client.close();

    const metrics = await scrapeMetrics(proxy.httpBase);
    expect(metricValue(metrics, 'keyhole_proxy_vnc_security_total', { scheme: 'vencrypt' })).toBeGreaterThanOrEqual(1);
    expect(await endedSession(issued.id)).toMatchObject({ close_reason: 'client closed' });
    expect(allLogs()).not.toContain(issued.token);
  }, 30_000);

  it('shows the VeNCrypt hypervisor in noVNC in Chromium, which needs no certificate', async () => {
    const issued = await issue(vencryptVm.vncPort);
    expect(issued.accessUrl.startsWith(`${proxy.httpBase}/vnc_lite.html?`)).toBe(true);
    const page = await browser.page();
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(issued.accessUrl);
    expect(await waitForVncScreen(page)).toBeGreaterThan(0.001);
    await page.screenshot({ path: join(artifactsDir(), 'novnc-vencrypt.png') });
    expect(errors).toEqual([]);
    await page.close();
  }, 60_000);

  it('refuses a hypervisor whose certificate the configured CA did not sign (1011), and tells the browser in RFB', async () => {
    const { issued, client } = await open(wrongCaProxy, vencryptVm.vncPort);
    const consumed = { bytes: 0 };
    expect(await handshakeToSecurityTypes(client, consumed)).toEqual(Buffer.from([1, 1]));
    await client.send(Buffer.from([1]));
    await expectFailedSecurityResult(client, consumed, 'hypervisor certificate not trusted');
    expect(await client.waitForClose()).toMatchObject({ code: 1011, reason: 'hypervisor certificate not trusted' });
    expect(await endedSession(issued.id)).toMatchObject({ close_reason: 'console security failed' });
    const line = await waitUntil(
      async () =>
        // Nest's static loggers write to the proxy started last, whichever proxy logs: read them all.
        allLogs()
          .split('\n')
          .find((text) => text.includes('VNC security with the hypervisor failed')),
      5_000,
      'the refusal to be logged',
      { intervalMs: 50 },
    );
    expect(JSON.parse(line)).toMatchObject({
      level: 'warn',
      reason: 'hypervisor certificate not trusted',
      fingerprint: expect.any(String),
    });
    expect(allLogs()).not.toContain(issued.token);
    const metrics = await scrapeMetrics(wrongCaProxy.httpBase);
    expect(metricValue(metrics, 'keyhole_proxy_connects_total', { result: 'console_security_failed' })).toBe(1);
  }, 30_000);

  it('is refused by a hypervisor that requires a client certificate when the proxy has none (1011)', async () => {
    const { client } = await open(noClientCertificateProxy, vencryptVm.vncPort);
    const consumed = { bytes: 0 };
    expect(await handshakeToSecurityTypes(client, consumed)).toEqual(Buffer.from([1, 1]));
    await client.send(Buffer.from([1]));
    await expectFailedSecurityResult(client, consumed, 'hypervisor refused the TLS handshake');
    expect(await client.waitForClose()).toMatchObject({ code: 1011, reason: 'hypervisor refused the TLS handshake' });
  }, 30_000);

  it('refuses a hypervisor offering only None when only vencrypt is allowed: no silent downgrade (1011)', async () => {
    const { issued, client } = await open(proxy, plainVm.vncPort);
    const consumed = { bytes: 0 };
    expect(await next(client, consumed, 12)).toEqual(RFB_3_8);
    await client.send(RFB_3_8);
    // RFB 3.8: no security types, then the reason.
    expect(await next(client, consumed, 1)).toEqual(Buffer.from([0]));
    const length = (await next(client, consumed, 4)).readUInt32BE(0);
    expect((await next(client, consumed, length)).toString('latin1')).toBe('hypervisor offers no allowed security type');
    expect(await client.waitForClose()).toMatchObject({ code: 1011, reason: 'hypervisor offers no allowed security type' });
    expect(await endedSession(issued.id)).toMatchObject({ close_reason: 'console security failed' });
  }, 30_000);

  it('uses None with a plain hypervisor when the scheme list allows it after vencrypt', async () => {
    const { client } = await open(noClientCertificateProxy, plainVm.vncPort);
    const consumed = { bytes: 0 };
    expect(await handshakeToSecurityTypes(client, consumed)).toEqual(Buffer.from([1, 1]));
    await client.send(Buffer.from([1]));
    expect(await next(client, consumed, 4)).toEqual(Buffer.from([0, 0, 0, 0]));
    await client.send(Buffer.from([1]));
    expect((await next(client, consumed, 24)).readUInt16BE(0)).toBeGreaterThanOrEqual(320);
    await client.close();
    const metrics = await scrapeMetrics(noClientCertificateProxy.httpBase);
    expect(metricValue(metrics, 'keyhole_proxy_vnc_security_total', { scheme: 'none' })).toBe(1);
  }, 30_000);

  it('refuses a browser that chooses a security type other than None (1008)', async () => {
    const { issued, client } = await open(proxy, vencryptVm.vncPort);
    const consumed = { bytes: 0 };
    expect(await handshakeToSecurityTypes(client, consumed)).toEqual(Buffer.from([1, 1]));
    // VNC authentication (2): not offered.
    await client.send(Buffer.from([2]));
    await expectFailedSecurityResult(client, consumed, 'browser must choose security type None');
    expect(await client.waitForClose()).toMatchObject({ code: 1008, reason: 'browser must choose security type None' });
    expect(await endedSession(issued.id)).toMatchObject({ close_reason: 'client security refused' });
    const metrics = await scrapeMetrics(proxy.httpBase);
    expect(metricValue(metrics, 'keyhole_proxy_connects_total', { result: 'client_security_refused' })).toBe(1);
  }, 30_000);
  it("shows the refusal in noVNC when the proxy does not trust the hypervisor: RFB's security failure, with the reason", async () => {
    const issued = await issue(vencryptVm.vncPort);
    const page = await browser.page();
    // The same page and token, from the proxy that trusts another CA.
    await page.goto(`${wrongCaProxy.httpBase}/vnc_lite.html?path=${encodeURIComponent(`websockify?token=${issued.token}`)}`);
    await page
      .waitForFunction(
        // noVNC closes the websocket itself on a failed SecurityResult, so the reason it shows is RFB's.
        () => /connection is closed: hypervisor certificate not trusted/.test(document.body.innerText),
        undefined,
        { timeout: 10_000 },
      )
      .catch(async (error: Error) => {
        throw new Error(`${error.message}; the page says: ${await page.evaluate(() => document.body.innerText)}`);
      });
    await page.screenshot({ path: join(artifactsDir(), 'novnc-vencrypt-refused.png') });
    await page.close();
    expect(await endedSession(issued.id)).toMatchObject({ close_reason: 'console security failed' });
  }, 30_000);

  it('reloads the CA on SIGHUP for new sessions, and keeps the files in use when the new ones cannot be used', async () => {
    const reloads = (message: string) =>
      allLogs()
        .split('\n')
        .filter((text) => text.includes(message)).length;
    const hangUp = async (message: string) => {
      const before = reloads(message);
      process.emit('SIGHUP', 'SIGHUP');
      await waitUntil(async () => (reloads(message) > before ? true : undefined), 5_000, `"${message}"`, { intervalMs: 50 });
    };
    const negotiate = async () => {
      const { client } = await open(wrongCaProxy, vencryptVm.vncPort);
      const consumed = { bytes: 0 };
      expect(await handshakeToSecurityTypes(client, consumed)).toEqual(Buffer.from([1, 1]));
      await client.send(Buffer.from([1]));
      return { client, consumed };
    };

    await writeFile(wrongCaFile, 'not a certificate\n');
    await hangUp('SIGHUP: VeNCrypt files refused, the previous ones stay');
    const refused = await negotiate();
    await expectFailedSecurityResult(refused.client, refused.consumed, 'hypervisor certificate not trusted');

    await copyFile(rightCaFile, wrongCaFile);
    await hangUp('SIGHUP: VeNCrypt files reloaded for new connections');
    const accepted = await negotiate();
    expect(await next(accepted.client, accepted.consumed, 4)).toEqual(Buffer.from([0, 0, 0, 0]));
    await accepted.client.close();
    const metrics = await scrapeMetrics(wrongCaProxy.httpBase);
    expect(metricValue(metrics, 'keyhole_tls_reloads_total', { listener: 'vencrypt', result: 'failed' })).toBe(1);
    expect(metricValue(metrics, 'keyhole_tls_reloads_total', { listener: 'vencrypt', result: 'ok' })).toBeGreaterThanOrEqual(1);
  }, 30_000);

  describe('bounds every read and the whole exchange (scripted hypervisors)', () => {
    const hypervisor = async (steps: { read: number; reply?: number[] }[], banner?: Buffer) =>
      teardown.add(await startTcpUpstream(scriptedHypervisor(steps, banner)));

    it('refuses a hypervisor that does not speak RFB 3.8, before the browser gets anything', async () => {
      const server = await hypervisor([], Buffer.from('RFB 003.003\n', 'latin1'));
      const { client } = await open(proxy, server.port);
      expect(await client.waitForClose()).toMatchObject({ code: 1011, reason: 'hypervisor does not speak RFB 3.8' });
      expect(client.receivedBytes).toBe(0);
    }, 15_000);

    it('does not read a refusal reason longer than 256 bytes (Nova bug 2155052), and refuses at once', async () => {
      // Announces 100 000 bytes of reason and sends none of them: a proxy that waited would time out.
      const server = await hypervisor([{ read: 12, reply: [0, ...u32(100_000)] }]);
      const { client } = await open(proxy, server.port);
      const consumed = { bytes: 0 };
      const startedAt = Date.now();
      expect(await next(client, consumed, 12)).toEqual(RFB_3_8);
      await client.send(RFB_3_8);
      expect(await next(client, consumed, 1)).toEqual(Buffer.from([0]));
      const length = (await next(client, consumed, 4)).readUInt32BE(0);
      expect((await next(client, consumed, length)).toString('latin1')).toBe('hypervisor refused the connection');
      expect(await client.waitForClose()).toMatchObject({ code: 1011, reason: 'hypervisor refused the connection' });
      expect(Date.now() - startedAt).toBeLessThan(NEGOTIATION_TIMEOUT_MS / 2);
      const line = await waitUntil(
        async () =>
          allLogs()
            .split('\n')
            .find((text) => text.includes('a reason of 100000 bytes, not read')),
        5_000,
        'the refusal to be logged',
        { intervalMs: 50 },
      );
      expect(JSON.parse(line)).toMatchObject({ reason: 'hypervisor refused the connection' });
    }, 15_000);

    it('refuses a VeNCrypt hypervisor without the X509None subtype (no anonymous TLS)', async () => {
      const server = await hypervisor([
        { read: 12, reply: [1, 19] },
        { read: 1, reply: [0, 2] },
        // Ack, then two subtypes: TLSNone (257) and X509Vnc (261).
        { read: 2, reply: [0, 2, ...u32(257), ...u32(261)] },
      ]);
      const { client } = await open(proxy, server.port);
      const consumed = { bytes: 0 };
      expect(await handshakeToSecurityTypes(client, consumed)).toEqual(Buffer.from([1, 1]));
      await client.send(Buffer.from([1]));
      await expectFailedSecurityResult(client, consumed, 'hypervisor offers no VeNCrypt X509None');
      expect(await client.waitForClose()).toMatchObject({ code: 1011, reason: 'hypervisor offers no VeNCrypt X509None' });
    }, 15_000);

    it('ends a negotiation the hypervisor stalls (1011) or the browser stalls (1008) within the connect timeout', async () => {
      const silentHypervisor = await hypervisor([{ read: 12 }]);
      const stalled = await open(proxy, silentHypervisor.port);
      const consumed = { bytes: 0 };
      const startedAt = Date.now();
      expect(await next(stalled.client, consumed, 12)).toEqual(RFB_3_8);
      await stalled.client.send(RFB_3_8);
      const close = await stalled.client.waitForClose(NEGOTIATION_TIMEOUT_MS + 3_000);
      expect(close).toMatchObject({ code: 1011, reason: 'RFB security negotiation timed out' });
      expect(close.atMs - startedAt).toBeLessThan(NEGOTIATION_TIMEOUT_MS + 1_000);

      // A browser that never answers the version: its fault, 1008.
      const silentBrowser = await open(proxy, vencryptVm.vncPort);
      const browserClose = await silentBrowser.client.waitForClose(NEGOTIATION_TIMEOUT_MS + 3_000);
      expect(browserClose).toMatchObject({ code: 1008, reason: 'RFB security negotiation timed out' });
      expect(await endedSession(silentBrowser.issued.id)).toMatchObject({ close_reason: 'client security refused' });
    }, 20_000);
  });
});
