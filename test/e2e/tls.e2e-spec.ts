import { randomUUID, X509Certificate } from 'node:crypto';
import { copyFile, writeFile } from 'node:fs/promises';
import { connect as connectTcp, Socket } from 'node:net';
import path from 'node:path';
import { CredentialsService } from '@keyhole/credentials';
import { CertificateFiles, requestOverTls, serverFingerprintAt, TestCertificateAuthority } from '../support/certificates';
import { startTestDeployment, TestDeployment } from '../support/deployment';
import { metricValue, scrapeMetrics } from '../support/metrics';
import { ProxyProcess, startProxyProcess } from '../support/proxy-process';
import { QUIET_API_ENVIRONMENT, startTokenApiProcess, TokenApiProcess } from '../support/token-api-process';
import { echo, startTcpUpstream, TcpUpstream } from '../support/tcp-upstreams';
import { stopAfterTests, Teardown } from '../support/teardown';
import { call } from '../support/token-api';
import { waitUntil } from '../support/wait';
import { connectConsole, expectRefusedUpgrade } from '../support/websocket-client';
import { insertTokenRow, keyParts } from './helpers';

/*
 * TLS without a front proxy (README's TLS): the console proxy and the token API, as real
 * processes, serve TLS with certificates this file makes with openssl; a real console session
 * runs over wss; plain HTTP is served on the same port or refused (TLS-only); the API
 * authenticates agents by client certificate; SIGHUP swaps the certificate for new connections
 * while live sessions keep flowing, and keeps the old one when the new files cannot be used.
 */

jest.setTimeout(60_000);

const teardown = new Teardown();
stopAfterTests(teardown);

let deployment: TestDeployment;
let upstream: TcpUpstream;
let authority: TestCertificateAuthority;
let strangers: TestCertificateAuthority;
let server: CertificateFiles;
let renewed: CertificateFiles;

beforeAll(async () => {
  deployment = teardown.add(await startTestDeployment(), (started) => started.stop());
  upstream = teardown.add(await startTcpUpstream(echo));
  authority = teardown.add(await TestCertificateAuthority.create('keyhole-test-ca'), (ca) => ca.remove());
  strangers = teardown.add(await TestCertificateAuthority.create('another-ca'), (ca) => ca.remove());
  server = await authority.issueServer('server');
  renewed = await authority.issueServer('server-renewed');
}, 60_000);

function proxyEnvironment(certificate: Pick<CertificateFiles, 'certFile' | 'keyFile'>, extra: Record<string, string> = {}) {
  return {
    KEYHOLE_CELL_NAME: 'cell1',
    KEYHOLE_CELL_DATABASE_URL: deployment.cellUrls.cell1,
    KEYHOLE_PROXY_TLS_CERT_FILE: certificate.certFile,
    KEYHOLE_PROXY_TLS_KEY_FILE: certificate.keyFile,
    ...extra,
  };
}

async function startProxy(environment: Record<string, string>): Promise<ProxyProcess> {
  return teardown.add(await startProxyProcess(environment), async (proxy) => {
    await proxy.stop('SIGKILL');
  });
}

async function issue(): Promise<string> {
  const response = await call(deployment.api.baseUrl, 'POST', '/v1/cells/cell1/tokens', {
    key: deployment.agentKeys.cell1,
    body: { instanceUuid: randomUUID(), consoleType: 'novnc', host: '127.0.0.1', port: upstream.port },
  });
  expect(response.status).toBe(201);
  return (response.body as { token: string }).token;
}

const consoleUrl = (scheme: 'ws' | 'wss', port: number, token: string) => `${scheme}://127.0.0.1:${port}/websockify?token=${token}`;

/** A TCP connection that sends nothing: it waits for its first byte until the proxy closes it. */
function openSilentConnection(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connectTcp(port, '127.0.0.1', () => resolve(socket));
    socket.once('error', reject);
  });
}

/** The output's JSON lines whose message is `message`. */
function linesWith(output: string, message: string): string[] {
  return output.split('\n').filter((line) => line.includes(`"msg":"${message}"`));
}

describe('console proxy over TLS', () => {
  it('runs a console session over wss with its certificate, and over ws on the same port', async () => {
    const proxy = await startProxy(proxyEnvironment(server));
    expect(linesWith(proxy.output(), 'console proxy listening')[0]).toContain('"tls":"on"');

    const secure = await connectConsole(consoleUrl('wss', proxy.port, await issue()), { ca: authority.ca.certificatePem });
    expect((await secure.roundTrip('over tls')).toString()).toBe('over tls');
    expect(await serverFingerprintAt(proxy.port, authority.ca.certificatePem)).toBe(server.fingerprint256);

    const plain = await connectConsole(consoleUrl('ws', proxy.port, await issue()));
    expect((await plain.roundTrip('in the clear')).toString()).toBe('in the clear');

    // A client that does not trust the CA gets no session.
    await expect(connectConsole(consoleUrl('wss', proxy.port, await issue()))).rejects.toThrow(/certificate/);
    await secure.close();
    await plain.close();
  });

  it('refuses plain upgrades and requests with 400 TLS_REQUIRED when TLS-only, and serves wss', async () => {
    const proxy = await startProxy(proxyEnvironment(server, { KEYHOLE_PROXY_TLS_ONLY: 'true' }));
    expect(linesWith(proxy.output(), 'console proxy listening')[0]).toContain('"tls":"only"');
    const token = await issue();

    const refused = await expectRefusedUpgrade(consoleUrl('ws', proxy.port, token));
    expect(refused.status).toBe(400);
    expect(JSON.parse(refused.body)).toEqual({ code: 'TLS_REQUIRED', message: expect.stringContaining('https://') });
    expect(refused.headers['cache-control']).toBe('no-store');
    const page = await fetch(`http://127.0.0.1:${proxy.port}/healthz`);
    expect(page.status).toBe(400);
    expect(((await page.json()) as { code: string }).code).toBe('TLS_REQUIRED');

    const secure = await connectConsole(consoleUrl('wss', proxy.port, token), { ca: authority.ca.certificatePem });
    expect((await secure.roundTrip('still served')).toString()).toBe('still served');
    await secure.close();

    // A browser's page came over https from the proxy itself: its Origin's scheme matches an https access URL.
    const httpsToken = await insertTokenRow(deployment.cellUrls.cell1, {
      host: '127.0.0.1',
      port: upstream.port,
      accessUrlBase: `https://127.0.0.1:${proxy.port}/vnc_lite.html`,
    });
    const browser = await connectConsole(consoleUrl('wss', proxy.port, httpsToken), {
      ca: authority.ca.certificatePem,
      origin: `https://127.0.0.1:${proxy.port}`,
    });
    expect((await browser.roundTrip('from the page')).toString()).toBe('from the page');
    await browser.close();
    const downgraded = await expectRefusedUpgrade(consoleUrl('wss', proxy.port, httpsToken), {
      ca: authority.ca.certificatePem,
      origin: `http://127.0.0.1:${proxy.port}`,
    });
    expect(downgraded.status).toBe(403);

    const metrics = await requestOverTls(`https://127.0.0.1:${proxy.port}/metrics`, { ca: authority.ca.certificatePem });
    expect(metrics.status).toBe(200);
    expect(metricValue(metrics.body as string, 'keyhole_tls_plain_requests_refused_total', { listener: 'proxy' })).toBe(2);
    expect(metricValue(metrics.body as string, 'keyhole_tls_certificate_expiry_seconds', { listener: 'proxy' })).toBe(
      Math.floor(Date.parse(new X509Certificate(server.certificatePem).validTo) / 1_000),
    );
  });

  it('swaps its certificate on SIGHUP in every worker: live sessions keep flowing, new connections see the new one; unusable files keep it', async () => {
    // The files the proxy reads; the test overwrites them as an operator renewing a certificate would.
    const live = { certFile: path.join(authority.directory, 'live.pem'), keyFile: path.join(authority.directory, 'live-key.pem') };
    await copyFile(server.certFile, live.certFile);
    await copyFile(server.keyFile, live.keyFile);
    const proxy = await startProxy(proxyEnvironment(live, { KEYHOLE_PROXY_WORKERS: '2' }));
    const ca = authority.ca.certificatePem;
    expect(await serverFingerprintAt(proxy.port, ca)).toBe(server.fingerprint256);
    const session = await connectConsole(consoleUrl('wss', proxy.port, await issue()), { ca });
    expect((await session.roundTrip('before')).toString()).toBe('before');

    await copyFile(renewed.certFile, live.certFile);
    await copyFile(renewed.keyFile, live.keyFile);
    proxy.child.kill('SIGHUP');
    await waitUntil(
      () => linesWith(proxy.output(), 'SIGHUP: TLS certificate reloaded for new connections').length === 2 || undefined,
      5_000,
      'both workers to reload the certificate',
    );
    expect((await session.roundTrip('during')).toString()).toBe('during');
    for (let attempt = 0; attempt < 6; attempt++) {
      expect(await serverFingerprintAt(proxy.port, ca)).toBe(renewed.fingerprint256);
    }
    let metrics = await scrapeMetrics(`http://127.0.0.1:${proxy.port}`);
    expect(metricValue(metrics, 'keyhole_tls_reloads_total', { listener: 'proxy', result: 'ok' })).toBe(2);

    // A key that does not belong to the certificate: refused, the renewed certificate stays.
    await writeFile(live.keyFile, server.keyPem);
    proxy.child.kill('SIGHUP');
    await waitUntil(
      () => linesWith(proxy.output(), 'SIGHUP: TLS files refused, the previous certificate stays').length === 2 || undefined,
      5_000,
      'both workers to refuse the files',
    );
    const refusal = linesWith(proxy.output(), 'SIGHUP: TLS files refused, the previous certificate stays')[0];
    expect(refusal).toContain('KEYHOLE_PROXY_TLS_KEY_FILE');
    expect(proxy.output()).not.toContain('PRIVATE KEY');
    expect(await serverFingerprintAt(proxy.port, ca)).toBe(renewed.fingerprint256);
    expect((await session.roundTrip('after')).toString()).toBe('after');
    metrics = await scrapeMetrics(`http://127.0.0.1:${proxy.port}`);
    expect(metricValue(metrics, 'keyhole_tls_reloads_total', { listener: 'proxy', result: 'failed' })).toBe(2);
    await session.close();
  });

  it('caps connections still before their first byte or in their handshake per address, as it caps unauthenticated ones', async () => {
    const proxy = await startProxy(proxyEnvironment(server, { KEYHOLE_PROXY_MAX_PENDING_PER_ADDRESS: '2' }));
    const ca = authority.ca.certificatePem;
    const silent = [await openSilentConnection(proxy.port), await openSilentConnection(proxy.port)];
    // A third from the same address is closed at accept, TLS or plain.
    await expect(serverFingerprintAt(proxy.port, ca)).rejects.toThrow(/ECONNRESET|socket disconnected|closed/);
    await expect(fetch(`http://127.0.0.1:${proxy.port}/healthz`)).rejects.toThrow();
    for (const socket of silent) {
      socket.destroy();
    }
    const after = await waitUntil(
      async () => (await serverFingerprintAt(proxy.port, ca).catch(() => undefined)) ?? undefined,
      5_000,
      'a TLS connection to be served once the silent ones are gone',
    );
    expect(after).toBe(server.fingerprint256);
    const counted = metricValue(await scrapeMetrics(`http://127.0.0.1:${proxy.port}`), 'keyhole_tls_connections_capped_total', {
      listener: 'proxy',
      reason: 'per_address',
    });
    // Two, or more if a try of waitUntil came before the proxy saw the silent ones close.
    expect(counted).toBeGreaterThanOrEqual(2);
  });

  it('does not start with files it cannot serve, naming the setting and showing no key material', async () => {
    const mismatched = startProxyProcess(proxyEnvironment({ certFile: server.certFile, keyFile: renewed.keyFile }));
    await expect(mismatched).rejects.toThrow(/exited \(2\)[\s\S]*KEYHOLE_PROXY_TLS_KEY_FILE: the key in .* does not match/);
    await expect(mismatched).rejects.not.toThrow(/PRIVATE KEY|BEGIN/);
    const missing = startProxyProcess(proxyEnvironment({ certFile: path.join(authority.directory, 'none.pem'), keyFile: server.keyFile }));
    await expect(missing).rejects.toThrow(/KEYHOLE_PROXY_TLS_CERT_FILE: cannot read .*none\.pem \(ENOENT\)/);
  });
});

describe('token API over TLS', () => {
  let api: TokenApiProcess;
  /** `https://127.0.0.1:PORT` of the API process (its baseUrl says http: it serves both schemes on one port). */
  let apiBase: string;
  let agentKey: string;
  let agentCertificate: CertificateFiles;
  let strangerCertificate: CertificateFiles;

  beforeAll(async () => {
    const credentials = deployment.api.app.get(CredentialsService);
    agentKey = (await credentials.create({ name: 'tls-agent', role: 'agent', cellName: 'cell1' })).key;
    const agentId = keyParts(agentKey).id;
    agentCertificate = await authority.issue('agent', { commonName: agentId, usage: 'client' });
    // The same name, signed by a CA the API does not trust.
    strangerCertificate = await strangers.issue('agent', { commonName: agentId, usage: 'client' });
    api = teardown.add(
      await startTokenApiProcess({
        KEYHOLE_DATABASE_URL: deployment.controlUrl,
        ...QUIET_API_ENVIRONMENT,
        KEYHOLE_API_TLS_CERT_FILE: server.certFile,
        KEYHOLE_API_TLS_KEY_FILE: server.keyFile,
        KEYHOLE_API_TLS_CLIENT_CA_FILE: authority.ca.certFile,
        KEYHOLE_API_TLS_ONLY: 'true',
      }),
      (started) => started.close(),
    );
    apiBase = api.baseUrl.replace(/^http:/, 'https:');
  });

  const issueOverTls = (credentials: { apiKey?: string; certificate?: CertificateFiles }, cell = 'cell1') =>
    requestOverTls(`${apiBase}/v1/cells/${cell}/tokens`, {
      method: 'POST',
      ca: authority.ca.certificatePem,
      apiKey: credentials.apiKey,
      cert: credentials.certificate?.certificatePem,
      key: credentials.certificate?.keyPem,
      body: { instanceUuid: randomUUID(), consoleType: 'novnc', host: '127.0.0.1', port: upstream.port },
    });

  it('serves https with its certificate; an agent authenticates with its key', async () => {
    const issued = await issueOverTls({ apiKey: agentKey });
    expect(issued.status).toBe(201);
    expect(issued.serverFingerprint).toBe(server.fingerprint256);
    expect(linesWith(api.process.output(), 'token API listening')[0]).toContain('"tls":"only"');
    expect((await issueOverTls({})).status).toBe(401);
  });

  it("authenticates an agent by a client certificate naming its credential, within the credential's cell", async () => {
    const issued = await issueOverTls({ certificate: agentCertificate });
    expect(issued.status).toBe(201);
    expect(issued.body).toMatchObject({ token: expect.any(String), accessUrl: expect.stringContaining('token') });
    expect((await issueOverTls({ certificate: agentCertificate }, 'cell2')).status).toBe(403);
  });

  it('closes the connection of a client certificate its CA did not sign, before any request', async () => {
    await expect(issueOverTls({ certificate: strangerCertificate })).rejects.toThrow(/socket hang up|ECONNRESET|closed/);
    const metrics = await requestOverTls(`${apiBase}/metrics`, { ca: authority.ca.certificatePem });
    expect(metricValue(metrics.body as string, 'keyhole_tls_client_certificates_refused_total', { listener: 'api' })).toBe(1);
  });

  it("refuses a revoked credential's certificate at once", async () => {
    expect((await issueOverTls({ certificate: agentCertificate })).status).toBe(201);
    const revoked = await call(deployment.api.baseUrl, 'DELETE', `/v1/credentials/${keyParts(agentKey).id}`, {
      key: deployment.operatorKey,
    });
    expect(revoked.status).toBe(204);
    const refused = await issueOverTls({ certificate: agentCertificate });
    expect(refused.status).toBe(401);
    expect(refused.body).toMatchObject({ code: 'UNAUTHENTICATED' });
  });

  it('refuses plain HTTP with 400 TLS_REQUIRED when TLS-only', async () => {
    const plain = await fetch(`${api.baseUrl}/healthz`);
    expect(plain.status).toBe(400);
    expect(await plain.json()).toEqual({ code: 'TLS_REQUIRED', message: expect.any(String) });
  });
});
