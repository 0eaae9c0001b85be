import { createHash } from 'node:crypto';
import { readFileSync, type Stats } from 'node:fs';
import { extname, join } from 'node:path';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { sendFixedError } from './error-responses';
import { locateNovnc, locateXterm, locateXtermFitAddon, resolveSpiceDirectory, spiceVersion } from './client-packages';
import { ASSET_CACHE_CONTROL, isSafeRequestPath, PAGE_CACHE_CONTROL, PAGE_CSP, setSecurityHeaders, spicePageCsp } from './security-headers';

export interface WebClientsOptions {
  /**
   * Directory of the Debian spice-html5 package's files (default '/usr/share/spice-html5'), served
   * at the root when it exists; null disables the SPICE pages.
   */
  spiceHtml5Dir?: string | null;
  /** Origins allowed to frame the pages (CSP frame-ancestors), e.g. `https://horizon.example.com`; none by default. */
  frameAncestors?: readonly string[];
}

type SetHeaders = (response: Response, contentSecurityPolicy: string, cacheControl: string) => void;

interface FixedFile {
  body: Buffer;
  contentType: string;
  etag: string;
}

/**
 * keyhole's own pages (`vnc-lite` for noVNC and `serial`: HTML, a script module, a style sheet each),
 * files beside this module: read from the sources under jest, from dist/ once built (the build
 * copies them). Their scripts are files of this origin, so the CSP allows no inline script.
 */
const PAGES_DIRECTORY = join(__dirname, 'pages');

/** Paths of the noVNC page: Nova's current default (`vnc_lite.html`), its old one and the root. */
const VNC_PAGE_PATHS = ['/vnc_lite.html', '/vnc.html', '/vnc_auto.html', '/'];

const HTML = 'text/html; charset=utf-8';
const JAVASCRIPT = 'text/javascript; charset=utf-8';
const CSS = 'text/css; charset=utf-8';

/**
 * The web clients a console proxy serves over plain HTTP GET/HEAD:
 * - noVNC: `/vnc_lite.html` (also `/`, `/vnc.html`, `/vnc_auto.html`), a page on the RFB library of
 *   the `@novnc/novnc` package, served at `/core/` and `/vendor/`;
 * - serial: `/serial.html`, an xterm.js terminal;
 * - SPICE: the spice-html5 directory's files at the root (`/spice_auto.html`, ...), when present.
 * Every response carries a Content-Security-Policy, nosniff, no-referrer and no framing; pages are
 * `no-store` (their URL holds the token). Paths with `..`, encoded separators or a leading `//` are
 * answered 404 before any lookup, and nothing redirects. Requests it does not serve (other paths,
 * other methods) go on to the next handler. It logs nothing: the query string holds the token.
 */
export function createWebClientsRouter(options: WebClientsOptions = {}): Router {
  const novnc = locateNovnc();
  const xterm = locateXterm();
  const fitAddon = locateXtermFitAddon();
  const spiceDirectory = resolveSpiceDirectory(options.spiceHtml5Dir);
  const frameAncestors = options.frameAncestors ?? [];
  const headers: SetHeaders = (response, csp, cacheControl) => setSecurityHeaders(response, csp, cacheControl, frameAncestors);

  const pages = new Map<string, FixedFile>([
    ...VNC_PAGE_PATHS.map((path): [string, FixedFile] => [path, pageFile('vnc-lite.html', HTML)]),
    ['/serial.html', pageFile('serial.html', HTML)],
  ]);
  // A fixed map: nothing under /keyhole/ is looked up on disk by request path.
  const assets = new Map<string, FixedFile>([
    ['/keyhole/vnc-lite.js', pageFile('vnc-lite.js', JAVASCRIPT)],
    ['/keyhole/vnc-lite.css', pageFile('vnc-lite.css', CSS)],
    ['/keyhole/serial.js', pageFile('serial.js', JAVASCRIPT)],
    ['/keyhole/serial.css', pageFile('serial.css', CSS)],
    ['/keyhole/xterm.mjs', fixedFile(readFileSync(join(xterm.root, 'lib/xterm.mjs')), JAVASCRIPT)],
    ['/keyhole/xterm.css', fixedFile(readFileSync(join(xterm.root, 'css/xterm.css')), CSS)],
    ['/keyhole/addon-fit.mjs', fixedFile(readFileSync(join(fitAddon.root, 'lib/addon-fit.mjs')), JAVASCRIPT)],
  ]);

  const router = express.Router({ caseSensitive: true, strict: true });

  router.use((request: Request, response: Response, next: NextFunction) => {
    if (isSafeRequestPath(request.path)) {
      next();
      return;
    }
    // Answered here, before any file lookup or redirect; the path is not echoed.
    headers(response, PAGE_CSP, PAGE_CACHE_CONTROL);
    sendFixedError(response, 404);
  });

  for (const [path, page] of pages) {
    router.get(path, (_request, response) => sendFixedFile(response, page, PAGE_CACHE_CONTROL, headers));
  }
  for (const [path, asset] of assets) {
    router.get(path, (_request, response) => sendFixedFile(response, asset, ASSET_CACHE_CONTROL, headers));
  }

  router.use(
    '/core',
    staticFiles(join(novnc.root, 'core'), () => PAGE_CSP, headers),
  );
  router.use(
    '/vendor',
    staticFiles(join(novnc.root, 'vendor'), () => PAGE_CSP, headers),
  );

  if (spiceDirectory !== null) {
    const pageCsp = new SpicePageCsp();
    router.use(staticFiles(spiceDirectory, (filePath, stat) => pageCsp.forFile(filePath, stat), headers));
  }
  return router;
}

/** What is served, for the proxy's README and startup log. */
export function describeWebClients(options: WebClientsOptions = {}): Record<string, string | null> {
  const spiceDirectory = resolveSpiceDirectory(options.spiceHtml5Dir);
  return {
    novnc: locateNovnc().version,
    serial: `xterm ${locateXterm().version}`,
    spice: spiceDirectory === null ? null : `spice-html5 ${spiceVersion(spiceDirectory) ?? '(version unknown)'} from ${spiceDirectory}`,
  };
}

function pageFile(name: string, contentType: string): FixedFile {
  return fixedFile(readFileSync(join(PAGES_DIRECTORY, name)), contentType);
}

function fixedFile(body: Buffer, contentType: string): FixedFile {
  const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`;
  return { body, contentType, etag };
}

function sendFixedFile(response: Response, file: FixedFile, cacheControl: string, headers: SetHeaders): void {
  headers(response, PAGE_CSP, cacheControl);
  response.setHeader('Content-Type', file.contentType);
  if (cacheControl !== PAGE_CACHE_CONTROL) {
    response.setHeader('ETag', file.etag);
  }
  // res.send answers 304 itself when the request's If-None-Match matches the ETag.
  response.send(file.body);
}

/**
 * express.static, restricted: no directory index, no directory redirect (a redirect built from a
 * `//host/..` path is an open redirect: Nova CVE-2021-3654), no dotfiles; misses fall through.
 */
function staticFiles(root: string, contentSecurityPolicy: (filePath: string, stat: Stats) => string, headers: SetHeaders) {
  return express.static(root, {
    index: false,
    redirect: false,
    dotfiles: 'ignore',
    fallthrough: true,
    setHeaders: (response: Response, filePath: string, stat: Stats) => {
      const isPage = isHtml(filePath);
      headers(response, contentSecurityPolicy(filePath, stat), isPage ? PAGE_CACHE_CONTROL : ASSET_CACHE_CONTROL);
    },
  });
}

function isHtml(filePath: string): boolean {
  const extension = extname(filePath).toLowerCase();
  return extension === '.html' || extension === '.htm';
}

/** The CSP of each spice-html5 file: hashes for its HTML pages, cached until the file changes. */
class SpicePageCsp {
  private readonly cache = new Map<string, { key: string; csp: string }>();

  forFile(filePath: string, stat: Stats): string {
    if (!isHtml(filePath)) {
      return PAGE_CSP;
    }
    const key = `${stat.mtimeMs}:${stat.size}`;
    const cached = this.cache.get(filePath);
    if (cached?.key === key) {
      return cached.csp;
    }
    const csp = spicePageCsp(readFileSync(filePath, 'utf8'));
    this.cache.set(filePath, { key, csp });
    return csp;
  }
}
