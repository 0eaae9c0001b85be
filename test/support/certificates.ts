import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { request as httpsRequest } from 'node:https';
import { connect as connectTls, TLSSocket } from 'node:tls';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** A certificate and its key as files, with the PEM texts. */
export interface CertificateFiles {
  certFile: string;
  keyFile: string;
  certificatePem: string;
  keyPem: string;
  /** As `TLSSocket#getPeerCertificate().fingerprint256` shows it. */
  fingerprint256: string;
}

export interface IssueOptions {
  commonName: string;
  /** For a server: `IP:127.0.0.1,DNS:localhost`. */
  subjectAltName?: string;
  usage: 'server' | 'client';
}

/**
 * A throwaway certificate authority for one test file, made with the openssl CLI in a temporary
 * directory: no key is committed, none outlives the file (`remove`).
 */
export class TestCertificateAuthority {
  private serial = 0;

  private constructor(
    readonly directory: string,
    readonly name: string,
    readonly ca: CertificateFiles,
  ) {}

  /** A new CA (EC P-256, one day) in a fresh directory under the system's temporary one. */
  static async create(name: string): Promise<TestCertificateAuthority> {
    const directory = await mkdtemp(path.join(tmpdir(), `keyhole-${name}-`));
    const certFile = path.join(directory, 'ca.pem');
    const keyFile = path.join(directory, 'ca-key.pem');
    await openssl(
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1'],
      ['-keyout', keyFile, '-out', certFile, '-subj', `/CN=${name}`],
      ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    );
    return new TestCertificateAuthority(directory, name, await readFiles(certFile, keyFile));
  }

  /** A certificate this CA signs, in files named after `fileName`. */
  async issue(fileName: string, options: IssueOptions): Promise<CertificateFiles> {
    const keyFile = path.join(this.directory, `${fileName}-key.pem`);
    const requestFile = path.join(this.directory, `${fileName}.csr`);
    const certFile = path.join(this.directory, `${fileName}.pem`);
    const extensionsFile = path.join(this.directory, `${fileName}.ext`);
    await openssl(
      ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'],
      ['-keyout', keyFile, '-out', requestFile, '-subj', `/CN=${options.commonName}`],
    );
    const extensions = [
      'basicConstraints=critical,CA:FALSE',
      `extendedKeyUsage=${options.usage === 'server' ? 'serverAuth' : 'clientAuth'}`,
      ...(options.subjectAltName ? [`subjectAltName=${options.subjectAltName}`] : []),
    ];
    await writeFile(extensionsFile, `${extensions.join('\n')}\n`);
    this.serial += 1;
    await openssl(
      ['x509', '-req', '-in', requestFile, '-CA', this.ca.certFile, '-CAkey', this.ca.keyFile, '-days', '1'],
      ['-set_serial', String(Date.now() * 100 + this.serial), '-extfile', extensionsFile, '-out', certFile],
    );
    return readFiles(certFile, keyFile);
  }

  /** A server certificate for 127.0.0.1 and localhost. */
  issueServer(fileName: string): Promise<CertificateFiles> {
    return this.issue(fileName, { commonName: 'localhost', subjectAltName: 'IP:127.0.0.1,DNS:localhost', usage: 'server' });
  }

  /** Deletes the directory and every key in it. */
  async remove(): Promise<void> {
    await rm(this.directory, { recursive: true, force: true });
  }
}

async function openssl(...argumentGroups: string[][]): Promise<void> {
  await run('openssl', argumentGroups.flat(), { timeout: 10_000 });
}

async function readFiles(certFile: string, keyFile: string): Promise<CertificateFiles> {
  const [certificatePem, keyPem] = await Promise.all([readFile(certFile, 'utf8'), readFile(keyFile, 'utf8')]);
  return { certFile, keyFile, certificatePem, keyPem, fingerprint256: new X509Certificate(certificatePem).fingerprint256 };
}

/** What a TLS client trusts and presents. */
export interface TlsClientOptions {
  /** The CA to trust (PEM). */
  ca: string;
  /** A client certificate and key (PEM) to present. */
  cert?: string;
  key?: string;
}

/**
 * A JSON request over https (the API or the proxy serving TLS) with an optional API key and client
 * certificate: status, parsed body, and the fingerprint of the certificate the server showed.
 */
export function requestOverTls(
  url: string,
  options: TlsClientOptions & { method?: string; apiKey?: string; body?: unknown; timeoutMs?: number },
): Promise<{ status: number; body: any; serverFingerprint: string }> {
  const { method = 'GET', apiKey, body, timeoutMs = 5_000, ...tlsOptions } = options;
  const text = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const request = httpsRequest(
      url,
      {
        method,
        ...tlsOptions,
        agent: false,
        timeout: timeoutMs,
        headers: {
          ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}),
          ...(text === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) }),
        },
      },
      (response) => {
        const serverFingerprint = (response.socket as TLSSocket).getPeerCertificate().fingerprint256;
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.once('end', () => {
          const raw = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = raw;
          try {
            parsed = JSON.parse(raw);
          } catch {
            // Not JSON: the text itself.
          }
          resolve({ status: response.statusCode ?? 0, body: parsed, serverFingerprint });
        });
        response.once('error', reject);
      },
    );
    request.once('timeout', () => request.destroy(new Error(`no answer from ${new URL(url).origin} within ${timeoutMs} ms`)));
    request.once('error', reject);
    request.end(text);
  });
}

/** Opens a TLS connection and returns the fingerprint of the certificate the server shows, then closes. */
export function serverFingerprintAt(port: number, ca: string, timeoutMs = 5_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connectTls({ host: '127.0.0.1', port, ca, servername: 'localhost', timeout: timeoutMs }, () => {
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      socket.destroy();
      resolve(fingerprint);
    });
    socket.once('timeout', () => socket.destroy(new Error(`no TLS handshake with port ${port} within ${timeoutMs} ms`)));
    socket.once('error', reject);
  });
}
