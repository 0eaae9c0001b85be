import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { CellsService } from '@keyhole/cells';
import { RunningProxy, startCell1Proxy } from '../support/console-proxy';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { queryDatabase } from '../support/databases';
import { artifactsDir, Browser, launchBrowser, waitForSerialStatus, waitForVncScreen } from '../support/real/browser';
import { QemuVm, startQemuVm } from '../support/real/qemu';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';

const INSTANCE = '9c1f6e2a-4b3d-4e5f-8a7b-6c5d4e3f2a1b';

/**
 * What a person does: the agent issues a console token for a real VM (QEMU, no disk: SeaBIOS on
 * VGA and on the serial port), the person opens the access URL in a real browser (headless
 * Chromium) and sees the machine; the operator revokes it and the console closes. The pages come
 * from the proxy itself.
 */
describe('consoles in a real browser through the proxy', () => {
  let deployment: TestDeployment;
  let proxy: RunningProxy;
  let vm: QemuVm;
  let browser: Browser;
  const artifacts = join(artifactsDir(), 'console-browser');

  beforeAll(async () => {
    mkdirSync(artifacts, { recursive: true });
    deployment = await startTestDeployment();
    proxy = await startCell1Proxy(deployment);
    // The cell's access URLs must point at this proxy, as in a deployment.
    await deployment.api.app.get(CellsService).updateProxyUrl('cell1', proxy.httpBase);
    vm = await startQemuVm({ timeoutMs: 30_000 });
    browser = await launchBrowser();
  }, 90_000);

  afterAll(async () => {
    await browser?.close();
    await vm?.stop();
    await proxy?.close();
    await deployment?.stop();
  });

  const issue = async (consoleType: 'novnc' | 'serial', port: number) => {
    const response = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
      key: deployment.agentKeys.cell1,
      body: { instanceUuid: INSTANCE, consoleType, host: '127.0.0.1', port },
    });
    expect(response.status).toBe(201);
    return response.body as { id: number; token: string; accessUrl: string };
  };

  it('opens the noVNC access URL and shows the machine screen; revoking the token closes it with 1008', async () => {
    const issued = await issue('novnc', vm.vncPort);
    expect(issued.accessUrl.startsWith(`${proxy.httpBase}/vnc_lite.html?path=websockify%3Ftoken%3D`)).toBe(true);
    const page = await browser.page();
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    await page.goto(issued.accessUrl);
    // SeaBIOS draws its banner: wait until the canvas is not blank.
    expect(await waitForVncScreen(page)).toBeGreaterThan(0.001);
    const screenshot = join(artifacts, 'novnc-connected.png');
    await page.screenshot({ path: screenshot });
    expect(statSync(screenshot).size).toBeGreaterThan(1_000);
    expect(errors).toEqual([]);

    const live = await call(deployment.api.baseUrl, 'GET', `/v1/cells/cell1/sessions?instanceUuid=${INSTANCE}`, {
      key: deployment.operatorKey,
    });
    expect(live.body.sessions).toEqual([expect.objectContaining({ consoleType: 'novnc', tokenId: issued.id, endedAt: null })]);

    const revoked = await call(deployment.api.baseUrl, 'DELETE', `/v1/cells/cell1/tokens/${issued.id}`, {
      key: deployment.agentKeys.cell1,
    });
    expect(revoked.status).toBe(204);
    await page.waitForFunction(() => /1008/.test(document.body.innerText) && /revoked/.test(document.body.innerText), undefined, {
      timeout: 5_000,
    });
    await page.screenshot({ path: join(artifacts, 'novnc-revoked.png') });
    await page.close();
  }, 60_000);

  it("opens the serial access URL and shows the machine's serial output, and keystrokes reach the machine", async () => {
    const issued = await issue('serial', vm.serialPort);
    expect(issued.accessUrl).toBe(`${proxy.httpBase}/serial.html?token=${issued.token}`);
    const page = await browser.page();
    await page.goto(issued.accessUrl);
    await waitForSerialStatus(page, /^connected$/);
    // The token is gone from the address bar once the page has read it.
    expect(page.url()).not.toContain(issued.token);
    await vm.waitForSerialClient({ timeoutMs: 10_000 });
    await vm.reset();
    await page.waitForFunction(() => /SeaBIOS/.test(document.body.innerText), undefined, { timeout: 20_000 });
    expect(
      await page.evaluate(() => (window as unknown as { keyholeSerial: { received: number } }).keyholeSerial.received),
    ).toBeGreaterThan(10);
    await page.screenshot({ path: join(artifacts, 'serial-connected.png') });

    // A second browser on the same serial port is refused while this one is connected.
    const second = await issue('serial', vm.serialPort);
    const other = await browser.page();
    await other.goto(second.accessUrl);
    await waitForSerialStatus(other, /closed/);
    await other.close();

    await page.keyboard.type('x');
    await page.close();
    // The session's end is recorded with its byte counts once the browser has left.
    const row = await waitUntil(
      async () =>
        (
          await queryDatabase(
            deployment.cellUrls.cell1,
            'SELECT bytes_to_upstream, close_reason FROM console_sessions WHERE token_id = $1 AND ended_at IS NOT NULL',
            [issued.id],
          )
        )[0],
      5_000,
      'the end of the session to be recorded',
      { intervalMs: 50 },
    );
    expect(row).toMatchObject({ close_reason: 'client closed' });
    expect(Number(row?.bytes_to_upstream)).toBeGreaterThanOrEqual(1);
    expect(proxy.logs()).not.toContain(issued.token);
  }, 60_000);
});
