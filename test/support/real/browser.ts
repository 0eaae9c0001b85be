/// <reference lib="dom" />
import { accessSync, constants, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { BrowserContext, chromium, Page } from 'playwright-core';

/** Debian's Chromium (a wrapper script that execs /usr/lib/chromium/chromium); never a downloaded one. */
export const CHROMIUM_PATH = '/usr/bin/chromium';

const CHROMIUM_ARGS = [
  '--no-sandbox', // we run as root in a container
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

export interface Browser {
  /** A new tab. All tabs share one fresh profile (cookies, storage) that lives until close(). */
  page(): Promise<Page>;
  /** The fresh profile directory (removed by close()). */
  readonly userDataDir: string;
  /** Closes Chromium and removes its profile directory. Idempotent. */
  close(): Promise<void>;
}

export function isChromiumAvailable(): boolean {
  try {
    accessSync(CHROMIUM_PATH, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Headless Debian Chromium through playwright-core. Playwright refuses `--user-data-dir` in `args` of
 * `launch()` ("Pass userDataDir parameter to launchPersistentContext"), so a fresh temporary profile is
 * given to `launchPersistentContext` instead, and removed on close.
 */
export async function launchBrowser(options: { timeoutMs?: number } = {}): Promise<Browser> {
  if (!isChromiumAvailable()) {
    throw new Error(`Chromium is not at ${CHROMIUM_PATH}: install it (Debian: apt-get install -y chromium)`);
  }
  const userDataDir = mkdtempSync(join(tmpdir(), 'keyhole-chromium-'));
  let context: BrowserContext;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: options.timeoutMs ?? 30_000,
    });
  } catch (error) {
    rmSync(userDataDir, { recursive: true, force: true });
    throw error;
  }
  let closing: Promise<void> | undefined;
  return {
    userDataDir,
    page: () => context.newPage(),
    close: () =>
      (closing ??= (async () => {
        try {
          await context.close();
        } finally {
          rmSync(userDataDir, { recursive: true, force: true });
        }
      })()),
  };
}

/** Directory for test artifacts (screenshots): `<repo>/test-artifacts`, created if missing; gitignored. */
export function artifactsDir(): string {
  const directory = resolve(__dirname, '../../../test-artifacts');
  mkdirSync(directory, { recursive: true });
  return directory;
}

/** Fraction of the page's canvas pixels that are not black (noVNC draws the remote screen there). */
export function litFraction(page: Page): Promise<number> {
  return page.evaluate(() => {
    const canvas = document.querySelector('canvas');
    if (!canvas || canvas.width === 0) {
      return 0;
    }
    const { data } = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height);
    let lit = 0;
    for (let index = 0; index < data.length; index += 4) {
      if (data[index] + data[index + 1] + data[index + 2] > 60) {
        lit += 1;
      }
    }
    return lit / (data.length / 4);
  });
}

/**
 * Waits until the noVNC page says it is connected and its canvas shows something (SeaBIOS draws its
 * banner), and resolves with the lit fraction of the canvas.
 */
export async function waitForVncScreen(page: Page, timeoutMs = 20_000): Promise<number> {
  await page.waitForFunction(() => /Connected/.test(document.body.innerText), undefined, { timeout: timeoutMs });
  await page.waitForFunction(
    () => {
      const canvas = document.querySelector('canvas');
      if (!canvas || canvas.width < 100) {
        return false;
      }
      const { data } = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height);
      for (let index = 0; index < data.length; index += 4) {
        if (data[index] + data[index + 1] + data[index + 2] > 60) {
          return true;
        }
      }
      return false;
    },
    undefined,
    { timeout: timeoutMs },
  );
  return litFraction(page);
}

/** Waits until the serial page's status (`window.keyholeSerial.status`) matches `status`. */
export async function waitForSerialStatus(page: Page, status: RegExp, timeoutMs = 10_000): Promise<void> {
  await page.waitForFunction(
    (source) => new RegExp(source).test((window as unknown as { keyholeSerial?: { status: string } }).keyholeSerial?.status ?? ''),
    status.source,
    { timeout: timeoutMs },
  );
}
