import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createDatabaseIfMissing, dropDatabase } from '@keyhole/db';
import { migrateTestDatabase, urlForDatabase } from '../support/databases';
import { applyNovaSchema, nova, NOVA_FIXTURE_VERSION } from '../support/nova';
import { ProxyProcess, startProxyProcess } from '../support/proxy-process';
import { Browser, launchBrowser, waitForVncScreen } from '../support/real/browser';
import { QemuVm, startQemuVm } from '../support/real/qemu';
import { Teardown } from '../support/teardown';

/*
 * What issue 14 is checked by: a token that Nova's own code wrote into a cell database that
 * `nova-manage db sync` made, opened in a real browser (noVNC in Chromium) through keyhole's
 * console proxy (its own process), to a real VM, in both orders of `nova-manage db sync` and
 * keyhole's migration. Nova's DDL and statements are the recorded ones (test/fixtures/nova);
 * scripts/nova/verify-with-real-nova.cjs does the same with Nova itself.
 */

const sha256 = (value: string) => createHash('sha256').update(value).digest('hex');

describe(`tokens written by Nova ${NOVA_FIXTURE_VERSION}'s code, opened in a browser through keyhole`, () => {
  const teardown = new Teardown();
  let vm: QemuVm;
  let browser: Browser;

  beforeAll(async () => {
    vm = teardown.add(await startQemuVm({ timeoutMs: 30_000 }), (started) => started.stop());
    browser = teardown.add(await launchBrowser());
  }, 90_000);

  afterAll(() => teardown.stopAll(), 60_000);

  it.each(['nova-manage db sync first', 'keyhole migrate first'])(
    'opens the noVNC access URL of a Nova token (%s) and shows the machine screen',
    async (order) => {
      const url = urlForDatabase(`keyhole_test_nova_browser_${randomBytes(5).toString('hex')}`);
      await createDatabaseIfMissing(url);
      teardown.add(url, () => dropDatabase(url));
      let proxy: ProxyProcess;
      const startProxy = async () =>
        teardown.add(await startProxyProcess({ KEYHOLE_CELL_NAME: 'cell1', KEYHOLE_CELL_DATABASE_URL: url }), (started) =>
          started.stop().then(() => undefined),
        );
      if (order === 'nova-manage db sync first') {
        await applyNovaSchema(url);
        await migrateTestDatabase('cell', url);
        proxy = await startProxy();
      } else {
        // keyhole runs before Nova's table exists; Nova's appears under it.
        await migrateTestDatabase('cell', url);
        proxy = await startProxy();
        await applyNovaSchema(url);
      }
      const httpBase = `http://127.0.0.1:${proxy.port}`;
      // Nova's ConsoleAuthToken.authorize: a UUID token, its SHA-256 stored; access_url as Nova builds it.
      const token = randomUUID();
      await nova.authorize(url, {
        tokenHash: sha256(token),
        host: '127.0.0.1',
        port: vm.vncPort,
        accessUrlBase: `${httpBase}/vnc_lite.html`,
      });
      const accessUrl = `${httpBase}/vnc_lite.html?${new URLSearchParams({ path: `?token=${token}` }).toString()}`;

      const page = await browser.page();
      const errors: string[] = [];
      page.on('pageerror', (error) => errors.push(error.message));
      await page.goto(accessUrl);
      expect(await waitForVncScreen(page)).toBeGreaterThan(0.001);
      expect(errors).toEqual([]);
      await page.close();
    },
    60_000,
  );
});
