import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigurationError, TlsSettings } from '@keyhole/config';
import { CertificateStore } from '@keyhole/tls';
import { CertificateFiles, TestCertificateAuthority } from '../support/certificates';

/*
 * The certificate files of a server's own TLS, as an operator gets them wrong: each problem is
 * named by its setting and file, nothing read from a file is ever quoted, and a reload that
 * cannot use the files keeps the certificate in use.
 */

jest.setTimeout(30_000);

let authority: TestCertificateAuthority;
let server: CertificateFiles;
let renewed: CertificateFiles;

beforeAll(async () => {
  authority = await TestCertificateAuthority.create('store-test-ca');
  server = await authority.issueServer('server');
  renewed = await authority.issueServer('renewed');
});

afterAll(async () => {
  await authority?.remove();
});

function settings(overrides: Partial<TlsSettings> = {}): TlsSettings {
  return { listener: 'api', certFile: server.certFile, keyFile: server.keyFile, clientCaFile: undefined, only: false, ...overrides };
}

/** The problems `CertificateStore.load` names, checking that none quotes a file's contents. */
function problemsOf(tls: TlsSettings, nowMs?: number): string[] {
  try {
    CertificateStore.load(tls, nowMs);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigurationError);
    const { message } = error as ConfigurationError;
    expect(message).not.toMatch(/-----BEGIN|PRIVATE KEY/);
    for (const pem of [server.keyPem, renewed.keyPem]) {
      const body = pem.split('\n')[1];
      expect(message).not.toContain(body);
    }
    return (error as ConfigurationError).problems;
  }
  throw new Error('the files were accepted');
}

async function file(name: string, contents: string): Promise<string> {
  const target = path.join(authority.directory, name);
  await writeFile(target, contents);
  return target;
}

describe('CertificateStore', () => {
  it('loads a certificate and its key, and tells what it serves', () => {
    const store = CertificateStore.load(settings({ clientCaFile: authority.ca.certFile }));
    expect(store.certificate).toEqual({
      subject: 'CN=localhost',
      fingerprint256: server.fingerprint256,
      notAfterSeconds: expect.any(Number),
    });
    expect(store.certificate.notAfterSeconds * 1_000).toBeGreaterThan(Date.now());
    expect(store.requestsClientCertificates).toBe(true);
  });

  it('names each setting whose file cannot be used', async () => {
    expect(problemsOf(settings({ certFile: '/nonexistent/cert.pem' }))).toEqual([
      'KEYHOLE_API_TLS_CERT_FILE: cannot read /nonexistent/cert.pem (ENOENT)',
    ]);
    expect(problemsOf(settings({ certFile: server.keyFile }))).toEqual([
      `KEYHOLE_API_TLS_CERT_FILE: ${server.keyFile} holds no PEM certificate`,
    ]);
    expect(problemsOf(settings({ keyFile: server.certFile }))).toEqual([
      `KEYHOLE_API_TLS_KEY_FILE: ${server.certFile} holds no unencrypted PEM private key`,
    ]);
    expect(problemsOf(settings({ keyFile: renewed.keyFile }))).toEqual([
      `KEYHOLE_API_TLS_KEY_FILE: the key in ${renewed.keyFile} does not match the certificate in KEYHOLE_API_TLS_CERT_FILE`,
    ]);
    const notCertificates = await file('not-a-ca.pem', 'certificates, honestly\n');
    expect(problemsOf(settings({ clientCaFile: notCertificates }))).toEqual([
      `KEYHOLE_API_TLS_CLIENT_CA_FILE: ${notCertificates} holds no PEM CA certificate`,
    ]);
    expect(problemsOf(settings({ listener: 'proxy', certFile: '/nonexistent/a.pem', keyFile: '/nonexistent/b.pem' }))).toEqual([
      'KEYHOLE_PROXY_TLS_CERT_FILE: cannot read /nonexistent/a.pem (ENOENT)',
      'KEYHOLE_PROXY_TLS_KEY_FILE: cannot read /nonexistent/b.pem (ENOENT)',
    ]);
  });

  it('refuses a certificate that has expired', () => {
    const inTwoDays = Date.now() + 2 * 86_400_000;
    expect(problemsOf(settings(), inTwoDays)).toEqual([
      expect.stringMatching(/^KEYHOLE_API_TLS_CERT_FILE: the certificate in .* expired on /),
    ]);
  });

  it('swaps the certificate on a reload of usable files, and keeps it when they cannot be used', async () => {
    const live = { certFile: await file('live.pem', server.certificatePem), keyFile: await file('live-key.pem', server.keyPem) };
    const store = CertificateStore.load(settings(live));

    await writeFile(live.keyFile, renewed.keyPem);
    const refused = store.reload();
    expect(refused).toEqual({ ok: false, problems: [expect.stringContaining('KEYHOLE_API_TLS_KEY_FILE: the key in')] });
    expect(store.certificate.fingerprint256).toBe(server.fingerprint256);
    expect(store.secureContextOptions.key).toBe(server.keyPem);

    await writeFile(live.certFile, renewed.certificatePem);
    expect(store.reload()).toEqual({ ok: true, certificate: expect.objectContaining({ fingerprint256: renewed.fingerprint256 }) });
    expect(store.certificate.fingerprint256).toBe(renewed.fingerprint256);
    expect(store.secureContextOptions).toEqual({ cert: renewed.certificatePem, key: renewed.keyPem, ca: undefined });
  });
});
