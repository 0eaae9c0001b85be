import { createHash } from 'node:crypto';
import type { Response } from 'express';

/** The `connect-src` of every policy here, which setSecurityHeaders narrows to the request's host. */
const CONNECT_SELF = "connect-src 'self'";

/** A Host header that may be written into a policy: a name or an IP literal, an optional port. */
const HOST_HEADER_PATTERN = /^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$/;

/**
 * `connect-src` naming only the page's own origin: `'self'`, and the same host as `ws://`/`wss://`
 * because `'self'` does not cover websockets in every browser. A Host that is not a plain host
 * name or address gets `'self'` alone (it never reaches the header verbatim).
 */
export function ownOriginConnectSource(host: string | undefined): string {
  if (host === undefined || !HOST_HEADER_PATTERN.test(host)) {
    return CONNECT_SELF;
  }
  return `${CONNECT_SELF} ws://${host} wss://${host}`;
}

/**
 * Content-Security-Policy of our own pages (noVNC, serial) and their assets. Scripts only from
 * files of this origin; styles also inline, because xterm.js and noVNC insert `<style>` elements
 * and style attributes at run time. Websockets only to this origin: setSecurityHeaders writes
 * `connect-src` for the request's own host (ownOriginConnectSource), so a page cannot send its
 * token anywhere else. Never framed: a console page must not be overlaid by another site
 * (clickjacking).
 */
export const PAGE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  CONNECT_SELF,
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** Cache-Control of pages: their URL carries the console token, so they are never stored. */
export const PAGE_CACHE_CONTROL = 'no-store';

/**
 * Cache-Control of scripts and styles: their URLs are not versioned, so browsers revalidate
 * (ETag / Last-Modified) instead of keeping a stale copy after an upgrade.
 */
export const ASSET_CACHE_CONTROL = 'no-cache';

/**
 * Headers on every response of the web-clients router. `frameAncestors` lists the only origins that
 * may show the pages in a frame (a dashboard such as Horizon's console tab); none by default.
 */
export function setSecurityHeaders(
  response: Response,
  contentSecurityPolicy: string,
  cacheControl: string,
  frameAncestors: readonly string[] = [],
): void {
  const framing = frameAncestors.length > 0 ? `frame-ancestors ${frameAncestors.join(' ')}` : "frame-ancestors 'none'";
  response.setHeader(
    'Content-Security-Policy',
    contentSecurityPolicy
      .replace("frame-ancestors 'none'", framing)
      .replace(CONNECT_SELF, ownOriginConnectSource(response.req.headers.host)),
  );
  response.setHeader('X-Content-Type-Options', 'nosniff');
  // The page URL holds the token: never send it to anyone as a referrer.
  response.setHeader('Referrer-Policy', 'no-referrer');
  // X-Frame-Options cannot name origins; with an allow-list the CSP alone decides.
  if (frameAncestors.length === 0) {
    response.setHeader('X-Frame-Options', 'DENY');
  }
  response.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
  response.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
  response.setHeader('Cache-Control', cacheControl);
}

/**
 * Content-Security-Policy for an HTML page of spice-html5, which is not ours and runs inline
 * scripts (`<script type="module">` blocks) and inline handlers (`onclick="open_nav()"`). Rather
 * than `'unsafe-inline'` (its `spice_auto.html` writes the `title` query parameter into innerHTML,
 * so an injected `<img onerror=...>` would run), each inline script and handler found in the file
 * is allowed by its SHA-256 hash; anything else inline is refused. Fails closed: what this does not
 * recognise does not run. Its video and audio use MediaSource (`blob:` URLs) and its cursors
 * `data:` images. Its `spice_auto.html` takes `host` and `port` from the query; the `connect-src`
 * of this origin alone (see setSecurityHeaders) keeps a crafted link from sending the token elsewhere.
 */
export function spicePageCsp(html: string): string {
  const scriptHashes = new Set<string>();
  for (const match of html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script\s*>/gi)) {
    if (/\bsrc\s*=/i.test(match[1] ?? '')) {
      continue;
    }
    scriptHashes.add(sha256Source(match[2] ?? ''));
  }
  const handlerHashes = new Set<string>();
  for (const match of html.matchAll(/\son[a-z]+\s*=\s*(?:"([^"]*)"|'([^']*)')/gi)) {
    const handler = match[1] ?? match[2] ?? '';
    // The browser hashes the attribute value after decoding character references: skip those.
    if (!handler.includes('&')) {
      handlerHashes.add(sha256Source(handler));
    }
  }
  const scriptSources = ["'self'", ...scriptHashes, ...handlerHashes];
  if (handlerHashes.size > 0) {
    scriptSources.push("'unsafe-hashes'");
  }
  return [
    "default-src 'self'",
    `script-src ${scriptSources.join(' ')}`,
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob:",
    CONNECT_SELF,
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

function sha256Source(text: string): string {
  return `'sha256-${createHash('sha256').update(text, 'utf8').digest('base64')}'`;
}

/**
 * Whether a raw (still percent-encoded) request path is safe to look up: no `..` or `.` segment,
 * encoded or not, no encoded slash or backslash, no NUL, no double encoding, no empty segment, and
 * no leading `//` (a path that a redirect would turn into another host: Nova CVE-2021-3654).
 */
export function isSafeRequestPath(rawPath: string): boolean {
  if (!rawPath.startsWith('/') || rawPath.startsWith('//')) {
    return false;
  }
  let decoded: string;
  try {
    decoded = decodeURIComponent(rawPath);
  } catch {
    return false;
  }
  // A '%' left after one decoding is double encoding; '\\' is a separator on some systems.
  if (/[\\%\0]/.test(decoded) || decoded.includes('//')) {
    return false;
  }
  // An encoded slash becomes a real separator once decoded, so check the decoded segments.
  return !decoded.split('/').some((segment) => segment === '..' || segment === '.');
}
