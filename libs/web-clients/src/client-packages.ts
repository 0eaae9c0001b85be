import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';

/** Where the Debian `spice-html5` package installs its files. */
export const DEFAULT_SPICE_HTML5_DIR = '/usr/share/spice-html5';

export interface PackageLocation {
  root: string;
  version: string;
}

/**
 * The `@novnc/novnc` package. It ships only the ES-module library (`core/`, `vendor/`), no `app/` and
 * no HTML pages; its `exports` names only `./core/rfb.js`, so `package.json` cannot be resolved
 * directly and the root is found from the entry point.
 */
export function locateNovnc(): PackageLocation {
  const root = resolve(dirname(require.resolve('@novnc/novnc')), '..');
  return { root, version: readPackageVersion(root, '@novnc/novnc') };
}

export function locateXterm(): PackageLocation {
  const root = dirname(require.resolve('@xterm/xterm/package.json'));
  return { root, version: readPackageVersion(root, '@xterm/xterm') };
}

export function locateXtermFitAddon(): PackageLocation {
  const root = dirname(require.resolve('@xterm/addon-fit/package.json'));
  return { root, version: readPackageVersion(root, '@xterm/addon-fit') };
}

/**
 * The spice-html5 directory to serve: the option (default {@link DEFAULT_SPICE_HTML5_DIR}) when it is
 * an existing directory; null when disabled or absent.
 */
export function resolveSpiceDirectory(option: string | null | undefined): string | null {
  if (option === null) {
    return null;
  }
  const directory = resolve(option ?? DEFAULT_SPICE_HTML5_DIR);
  try {
    return statSync(directory).isDirectory() ? directory : null;
  } catch {
    return null;
  }
}

/**
 * The spice-html5 version: from a `package.json` (an upstream checkout has one), else from dpkg when
 * the Debian package owns the directory, else null.
 */
export function spiceVersion(directory: string): string | null {
  const packageJson = join(directory, 'package.json');
  if (existsSync(packageJson)) {
    try {
      const parsed = JSON.parse(readFileSync(packageJson, 'utf8')) as { version?: unknown };
      if (typeof parsed.version === 'string') {
        return parsed.version;
      }
    } catch {
      // Not JSON: fall through to dpkg.
    }
  }
  return debianPackageVersion('spice-html5', directory);
}

function readPackageVersion(root: string, name: string): string {
  const parsed = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { name?: unknown; version?: unknown };
  if (parsed.name !== name || typeof parsed.version !== 'string') {
    throw new Error(`${root} is not the ${name} package`);
  }
  return parsed.version;
}

/** The installed version of a Debian package that lists `directory` among its files, or null. */
function debianPackageVersion(packageName: string, directory: string): string | null {
  try {
    const files = readFileSync(`/var/lib/dpkg/info/${packageName}.list`, 'utf8').split('\n');
    if (!files.includes(directory)) {
      return null;
    }
    // /var/lib/dpkg/status: stanzas separated by blank lines, "Field: value" lines.
    const stanza = readFileSync('/var/lib/dpkg/status', 'utf8')
      .split('\n\n')
      .find((block) => block.startsWith(`Package: ${packageName}\n`));
    return /^Version: (.+)$/m.exec(stanza ?? '')?.[1] ?? null;
  } catch {
    return null;
  }
}
