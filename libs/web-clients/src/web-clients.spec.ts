import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import http, { type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import express from 'express';
import ts from 'typescript';
import { createWebClientsRouter, describeWebClients, type WebClientsOptions } from './web-clients.router';
import { isSafeRequestPath, ownOriginConnectSource, spicePageCsp } from './security-headers';

const SERIAL_JS = readFileSync(join(__dirname, 'pages', 'serial.js'), 'utf8');
const VNC_LITE_JS = readFileSync(join(__dirname, 'pages', 'vnc-lite.js'), 'utf8');

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

const TOKEN = 'SeCrEtToKeN-0123456789';
const DEBIAN_SPICE_DIR = '/usr/share/spice-html5';

const FAKE_SPICE_AUTO = `<!doctype html>
<html><head><title>Spice</title>
<script type="module">
  import * as SpiceHtml5 from './main.js';
  window.connected = SpiceHtml5;
</script>
<script src="other.js"></script>
</head><body><button onclick="open_nav()">menu</button></body></html>
`;

/** A plain HTTP server with the router, on 127.0.0.1 port 0; requests sent verbatim (no URL normalisation). */
class TestServer {
  private constructor(
    private readonly server: http.Server,
    readonly port: number,
  ) {}

  static async start(options?: WebClientsOptions): Promise<TestServer> {
    const app = express();
    app.use(createWebClientsRouter(options));
    const server = http.createServer(app);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return new TestServer(server, (server.address() as AddressInfo).port);
  }

  request(path: string, method = 'GET', headers: Record<string, string> = {}): Promise<Answer> {
    return new Promise((resolvePromise, reject) => {
      const request = http.request({ host: '127.0.0.1', port: this.port, path, method, headers, agent: false }, (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () =>
          resolvePromise({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks).toString('utf8') }),
        );
        response.on('error', reject);
      });
      request.on('error', reject);
      request.end();
    });
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    this.server.close();
    await once(this.server, 'close');
  }
}

function expectSecurityHeaders(answer: Answer): void {
  const csp = String(answer.headers['content-security-policy']);
  expect(csp).toContain("default-src 'self'");
  expect(csp).toContain("frame-ancestors 'none'");
  // Websockets to this origin only (the test client sends Host 127.0.0.1:PORT): never ws: or wss: at large.
  expect(csp).toMatch(/connect-src 'self' ws:\/\/127\.0\.0\.1:\d+ wss:\/\/127\.0\.0\.1:\d+;/);
  expect(csp).not.toMatch(/script-src[^;]*'unsafe-inline'/);
  expect(answer.headers['x-content-type-options']).toBe('nosniff');
  expect(answer.headers['referrer-policy']).toBe('no-referrer');
}

function expectPage(answer: Answer): void {
  expect(answer.status).toBe(200);
  expect(answer.headers['content-type']).toMatch(/^text\/html/);
  expect(answer.headers['cache-control']).toBe('no-store');
  expectSecurityHeaders(answer);
}

function expectJavaScript(answer: Answer): void {
  expect(answer.status).toBe(200);
  expect(answer.headers['content-type']).toMatch(/^(text|application)\/javascript/);
  expect(answer.headers['cache-control']).not.toBe('no-store');
  expectSecurityHeaders(answer);
}

/** Relative ES-module imports of a script, resolved against its URL path. */
function relativeImports(source: string, fromPath: string): string[] {
  const specifiers = [...source.matchAll(/(?:\bimport|\bexport)\s*(?:[\w*{}\s,]+from\s*)?["'](\.{1,2}\/[^"']+)["']/g)].map(
    (match) => match[1],
  );
  return specifiers.map((specifier) => new URL(specifier, `http://x${fromPath}`).pathname);
}

/**
 * Fetches a script and every module it imports, transitively, expecting each to be served as
 * JavaScript; returns the paths fetched.
 */
async function fetchImportGraph(server: TestServer, entry: string): Promise<Set<string>> {
  const seen = new Set<string>();
  const pending = [entry];
  while (pending.length > 0) {
    const path = pending.pop()!;
    if (seen.has(path)) {
      continue;
    }
    seen.add(path);
    const answer = await server.request(path);
    expect({ path, status: answer.status }).toEqual({ path, status: 200 });
    expectJavaScript(answer);
    pending.push(...relativeImports(answer.body, path));
  }
  return seen;
}

describe('web clients router', () => {
  let server: TestServer;
  let fakeSpiceServer: TestServer;
  let noSpiceServer: TestServer;
  let fakeSpiceRoot: string;

  beforeAll(async () => {
    fakeSpiceRoot = mkdtempSync(join(tmpdir(), 'keyhole-spice-'));
    const spiceDir = join(fakeSpiceRoot, 'spice-html5');
    mkdirSync(join(spiceDir, 'thirdparty'), { recursive: true });
    writeFileSync(join(spiceDir, 'spice_auto.html'), FAKE_SPICE_AUTO);
    writeFileSync(join(spiceDir, 'main.js'), 'export const version = "fake";\n');
    writeFileSync(join(spiceDir, 'thirdparty', 'sha1.js'), '// sha1\n');
    writeFileSync(join(spiceDir, '.hidden'), 'hidden\n');
    writeFileSync(join(fakeSpiceRoot, 'outside.txt'), 'OUTSIDE-THE-SPICE-DIRECTORY\n');

    server = await TestServer.start();
    fakeSpiceServer = await TestServer.start({ spiceHtml5Dir: spiceDir });
    noSpiceServer = await TestServer.start({ spiceHtml5Dir: null });
  });

  afterAll(async () => {
    await Promise.all([server?.close(), fakeSpiceServer?.close(), noSpiceServer?.close()]);
    rmSync(fakeSpiceRoot, { recursive: true, force: true });
  });

  describe('noVNC', () => {
    it.each(['/vnc_lite.html', '/vnc.html', '/vnc_auto.html', '/'])(
      'serves the noVNC page at %s without echoing the token',
      async (path) => {
        const answer = await server.request(`${path}?path=websockify%3Ftoken%3D${TOKEN}`);
        expectPage(answer);
        expect(answer.body).toContain('<script type="module" src="keyhole/vnc-lite.js"></script>');
        expect(answer.body).not.toContain(TOKEN);
        expect(answer.headers.location).toBeUndefined();
      },
    );

    it('answers HEAD like GET, without a body', async () => {
      const answer = await server.request('/vnc_lite.html', 'HEAD');
      expect(answer.status).toBe(200);
      expect(answer.headers['cache-control']).toBe('no-store');
      expect(answer.body).toBe('');
    });

    it('serves the RFB module of @novnc/novnc and every module it imports, as JavaScript', async () => {
      const rfb = await server.request('/core/rfb.js');
      expectJavaScript(rfb);
      expect(rfb.body).toContain('export default class RFB');

      // The whole import graph from the page script: a missing module breaks the page.
      const seen = await fetchImportGraph(server, '/keyhole/vnc-lite.js');
      expect(seen).toContain('/core/rfb.js');
      expect(seen).toContain('/vendor/pako/lib/zlib/inflate.js');
      expect(seen.size).toBeGreaterThan(30);
    });

    it('lets browsers revalidate assets by ETag', async () => {
      const first = await server.request('/keyhole/vnc-lite.js');
      expect(first.headers.etag).toBeDefined();
      expect(first.headers['cache-control']).toBe('no-cache');
      const second = await server.request('/keyhole/vnc-lite.js', 'GET', { 'If-None-Match': String(first.headers.etag) });
      expect(second.status).toBe(304);
    });
  });

  describe('serial console', () => {
    it('serves serial.html, which loads its script and styles from files', async () => {
      const answer = await server.request(`/serial.html?token=${TOKEN}`);
      expectPage(answer);
      expect(answer.body).toContain('<script type="module" src="keyhole/serial.js"></script>');
      expect(answer.body).toContain('href="keyhole/xterm.css"');
      expect(answer.body).not.toMatch(/\son[a-z]+=/i);
      expect(answer.body).not.toContain(TOKEN);
    });

    it('serves the page script, xterm.js and its fit addon as JavaScript', async () => {
      const seen = await fetchImportGraph(server, '/keyhole/serial.js');
      expect([...seen].sort()).toEqual(['/keyhole/addon-fit.mjs', '/keyhole/serial.js', '/keyhole/xterm.mjs']);
      const xterm = await server.request('/keyhole/xterm.mjs');
      expect(xterm.body).toContain('as Terminal}');
    });

    it('serves the xterm and page styles as CSS', async () => {
      for (const path of ['/keyhole/xterm.css', '/keyhole/serial.css', '/keyhole/vnc-lite.css']) {
        const answer = await server.request(path);
        expect({ path, status: answer.status }).toEqual({ path, status: 200 });
        expect(answer.headers['content-type']).toMatch(/^text\/css/);
        expectSecurityHeaders(answer);
      }
    });

    it('connects to the serial websocket beside the page with the token, in binary, and removes the token from the address bar', () => {
      expect(SERIAL_JS).toContain("new URL('serial', window.location.href)");
      expect(SERIAL_JS).toContain("'?token=' + encodeURIComponent(token)");
      expect(SERIAL_JS).toContain("new WebSocket(websocketUrl(token), ['binary'])");
      expect(SERIAL_JS).toContain("socket.binaryType = 'arraybuffer'");
      expect(SERIAL_JS).toContain('window.history.replaceState');
      expect(SERIAL_JS).not.toMatch(/reconnect|setTimeout/);
    });
  });

  describe('browser scripts', () => {
    it('vnc-lite.js builds its websocket URL from its own location only, never from host, port or encrypt', () => {
      for (const ignored of ['host', 'port', 'encrypt']) {
        expect(VNC_LITE_JS).not.toContain(`readQueryVariable('${ignored}'`);
        expect(VNC_LITE_JS).not.toContain(`readBoolean('${ignored}'`);
      }
      expect(VNC_LITE_JS).toContain("scheme + '//' + window.location.host + '/'");
    });

    it.each([
      ['vnc-lite.js', VNC_LITE_JS],
      ['serial.js', SERIAL_JS],
    ])('%s is valid JavaScript', (name, source) => {
      const output = ts.transpileModule(source, {
        fileName: name,
        reportDiagnostics: true,
        compilerOptions: { allowJs: true, module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
      });
      expect(output.diagnostics?.map((diagnostic) => ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n'))).toEqual([]);
    });
  });

  describe('our pages', () => {
    it.each([
      ['/vnc_lite.html', 'vnc-lite.html'],
      ['/serial.html', 'serial.html'],
      ['/keyhole/vnc-lite.js', 'vnc-lite.js'],
      ['/keyhole/serial.js', 'serial.js'],
      ['/keyhole/vnc-lite.css', 'vnc-lite.css'],
      ['/keyhole/serial.css', 'serial.css'],
    ])('serves %s as the file pages/%s is', async (path, file) => {
      const answer = await server.request(path);
      expect(answer.status).toBe(200);
      expect(answer.body).toBe(readFileSync(join(__dirname, 'pages', file), 'utf8'));
    });

    it.each(['vnc-lite.html', 'serial.html'])('%s has no inline script or handler', (file) => {
      const html = readFileSync(join(__dirname, 'pages', file), 'utf8');
      const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script\s*>/gi)];
      expect(scripts.length).toBeGreaterThan(0);
      for (const [, attributes, body] of scripts) {
        expect({ attributes, body }).toEqual({ attributes: expect.stringMatching(/\ssrc="keyhole\/[a-z-]+\.js"/), body: '' });
      }
      expect(html).not.toMatch(/\son[a-z]+\s*=/i);
    });
  });

  describe('path safety', () => {
    const repositoryPackageJson = readFileSync(resolve(__dirname, '../../../package.json'), 'utf8');
    const novncPackageJson = readFileSync(resolve(dirname(require.resolve('@novnc/novnc')), '../package.json'), 'utf8');

    it.each([
      '/../package.json',
      '/%2e%2e/package.json',
      '/%2E%2E/package.json',
      '/core/../package.json',
      '/core/..%2fpackage.json',
      '/core/..%2f..%2fpackage.json',
      '/core/%2e%2e/package.json',
      '/core/%2e%2e%2f%2e%2e%2fpackage.json',
      '/vendor/..%5c..%5cpackage.json',
      '/core/..%252fpackage.json',
      '/core/.%2e/package.json',
      '/core/./rfb.js',
      '/keyhole/..%2f..%2fpackage.json',
      '/core/rfb.js%00.html',
      '/core//rfb.js',
    ])('refuses %s without serving any file', async (path) => {
      for (const target of [server, fakeSpiceServer]) {
        const answer = await target.request(path);
        expect([400, 404]).toContain(answer.status);
        expect(answer.body).not.toContain('"name"');
        expect(answer.body).not.toBe(repositoryPackageJson);
        expect(answer.body).not.toBe(novncPackageJson);
        expect(answer.headers.location).toBeUndefined();
        expectSecurityHeaders(answer);
      }
    });

    it.each(['/%2e%2e/outside.txt', '/..%2foutside.txt', '/thirdparty/..%2f..%2foutside.txt', '/thirdparty/%2e%2e/%2e%2e/outside.txt'])(
      'never serves a file outside the spice-html5 directory: %s',
      async (path) => {
        const answer = await fakeSpiceServer.request(path);
        expect([400, 404]).toContain(answer.status);
        expect(answer.body).not.toContain('OUTSIDE-THE-SPICE-DIRECTORY');
      },
    );

    it.each([
      '//example.com/%2F..',
      '//example.com/%2F../',
      '//example.com',
      '//example.com/',
      '/core',
      '/core/',
      '/vendor',
      '/thirdparty',
      '//core',
    ])('answers %s without redirecting anywhere (Nova CVE-2021-3654)', async (path) => {
      for (const target of [server, fakeSpiceServer]) {
        const answer = await target.request(path);
        expect(answer.status).toBeGreaterThanOrEqual(400);
        expect(answer.headers.location).toBeUndefined();
      }
    });

    it('does not serve dotfiles', async () => {
      expect((await fakeSpiceServer.request('/.hidden')).status).toBe(404);
    });

    it.each(['POST', 'PUT', 'DELETE', 'PATCH'])('does not answer %s', async (method) => {
      for (const path of ['/vnc_lite.html', '/serial.html', '/core/rfb.js', '/keyhole/serial.js']) {
        const answer = await server.request(path, method);
        expect([404, 405]).toContain(answer.status);
        expect(answer.body).not.toContain('RFB');
      }
      expect([404, 405]).toContain((await fakeSpiceServer.request('/spice_auto.html', method)).status);
    });

    it('knows a safe path from an unsafe one', () => {
      expect(isSafeRequestPath('/core/util/browser.js')).toBe(true);
      expect(isSafeRequestPath('/vnc_lite.html')).toBe(true);
      expect(isSafeRequestPath('/')).toBe(true);
      expect(isSafeRequestPath('/%E0%A4%A')).toBe(false);
      expect(isSafeRequestPath('//evil.example/')).toBe(false);
      expect(isSafeRequestPath('/a/%2F%2Fb')).toBe(false);
      expect(isSafeRequestPath('relative')).toBe(false);
    });
  });

  describe('SPICE', () => {
    it('serves the spice-html5 directory at the root, pages no-store with a CSP allowing exactly their inline scripts', async () => {
      const page = await fakeSpiceServer.request(`/spice_auto.html?token=${TOKEN}`);
      expectPage(page);
      expect(page.body).toBe(FAKE_SPICE_AUTO);
      const inlineModule = /<script type="module">([\s\S]*?)<\/script>/.exec(FAKE_SPICE_AUTO)![1];
      const scriptSrc = /script-src ([^;]*)/.exec(String(page.headers['content-security-policy']))![1].split(' ');
      expect(scriptSrc.sort()).toEqual(
        [
          "'self'",
          `'sha256-${createHash('sha256').update(inlineModule).digest('base64')}'`,
          `'sha256-${createHash('sha256').update('open_nav()').digest('base64')}'`,
          "'unsafe-hashes'",
        ].sort(),
      );

      const script = await fakeSpiceServer.request('/main.js');
      expectJavaScript(script);
      expect(script.headers['cache-control']).toBe('no-cache');
      expect((await fakeSpiceServer.request('/thirdparty/sha1.js')).status).toBe(200);
    });

    it('keeps our own pages ahead of the spice-html5 files', async () => {
      expect((await fakeSpiceServer.request('/vnc_lite.html')).body).toContain('keyhole/vnc-lite.js');
    });

    it('serves no SPICE pages when disabled', async () => {
      expect((await noSpiceServer.request('/spice_auto.html')).status).toBe(404);
      expect(describeWebClients({ spiceHtml5Dir: null }).spice).toBeNull();
      expect(describeWebClients({ spiceHtml5Dir: join(fakeSpiceRoot, 'missing') }).spice).toBeNull();
    });

    it('serves the Debian spice-html5 package by default when it is installed', async () => {
      const installed = existsSync(DEBIAN_SPICE_DIR);
      const answer = await server.request(`/spice_auto.html?token=${TOKEN}`);
      if (installed) {
        expectPage(answer);
        expect(answer.body).toContain("import * as SpiceHtml5 from './main.js'");
        expect(String(answer.headers['content-security-policy'])).toMatch(/script-src 'self' 'sha256-/);
        expect(describeWebClients().spice).toMatch(/^spice-html5 .+ from \/usr\/share\/spice-html5$/);
      } else {
        expect(answer.status).toBe(404);
        expect(describeWebClients().spice).toBeNull();
      }
    });

    it('names only a plain host in connect-src, never a Host header that could change the policy', () => {
      expect(ownOriginConnectSource('console.example.com:6080')).toBe(
        "connect-src 'self' ws://console.example.com:6080 wss://console.example.com:6080",
      );
      expect(ownOriginConnectSource('[2001:db8::1]:6080')).toBe("connect-src 'self' ws://[2001:db8::1]:6080 wss://[2001:db8::1]:6080");
      for (const hostile of [undefined, '', 'a.example; script-src *', 'a.example *', 'a.example/x', 'ws://a.example', "a'b"]) {
        expect(ownOriginConnectSource(hostile)).toBe("connect-src 'self'");
      }
    });

    it('refuses injected inline handlers on spice pages', () => {
      const csp = spicePageCsp('<p onclick="open_nav()">x</p><p onclick="a&amp;b">y</p>');
      expect(csp).toContain(`'sha256-${createHash('sha256').update('open_nav()').digest('base64')}'`);
      expect(csp).not.toContain("'unsafe-inline' 'sha");
      expect(csp.split('sha256-')).toHaveLength(2);
    });
  });

  describe('describeWebClients', () => {
    it('names the versions served', () => {
      const novncVersion = JSON.parse(readFileSync(resolve(dirname(require.resolve('@novnc/novnc')), '../package.json'), 'utf8')).version;
      const xtermVersion = JSON.parse(readFileSync(require.resolve('@xterm/xterm/package.json'), 'utf8')).version;
      const description = describeWebClients({ spiceHtml5Dir: join(fakeSpiceRoot, 'spice-html5') });
      expect(description).toEqual({
        novnc: novncVersion,
        serial: `xterm ${xtermVersion}`,
        spice: `spice-html5 (version unknown) from ${join(fakeSpiceRoot, 'spice-html5')}`,
      });
    });
  });
});

describe('framing by a dashboard', () => {
  it('refuses every frame by default, and allows exactly the configured origins when asked', async () => {
    const closed = await TestServer.start({ spiceHtml5Dir: null });
    const open = await TestServer.start({ spiceHtml5Dir: null, frameAncestors: ['https://horizon.example.com'] });
    try {
      const refused = await closed.request('/vnc_lite.html');
      expect(refused.headers['x-frame-options']).toBe('DENY');
      expect(String(refused.headers['content-security-policy'])).toContain("frame-ancestors 'none'");
      for (const path of ['/vnc_lite.html', '/serial.html', '/keyhole/serial.js']) {
        const allowed = await open.request(path);
        expect(allowed.status).toBe(200);
        expect(allowed.headers['x-frame-options']).toBeUndefined();
        expect(String(allowed.headers['content-security-policy'])).toContain('frame-ancestors https://horizon.example.com');
        expect(String(allowed.headers['content-security-policy'])).not.toContain("frame-ancestors 'none'");
      }
    } finally {
      await closed.close();
      await open.close();
    }
  });
});
