import { createPrivateKey, KeyObject, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { ConfigurationError, TlsSettings, tlsVariableNames } from '@keyhole/config';

/** What logs and metrics may say about a certificate: public facts only, never its key. */
export interface CertificateSummary {
  subject: string;
  /** SHA-256 fingerprint, as `openssl x509 -fingerprint -sha256` prints it. */
  fingerprint256: string;
  /** The end of its validity, in epoch seconds. */
  notAfterSeconds: number;
}

/** A reload's outcome: the certificate now served, or why the files were refused (the old one stays). */
export type CertificateReload = { ok: true; certificate: CertificateSummary } | { ok: false; problems: string[] };

/** PEM texts as `tls.createSecureContext` and `Server#setSecureContext` take them. */
export interface SecureContextFiles {
  cert: string;
  key: string;
  ca: string | undefined;
}

interface LoadedCertificate {
  files: SecureContextFiles;
  summary: CertificateSummary;
}

type Loading = { ok: true; loaded: LoadedCertificate } | { ok: false; problems: string[] };

/**
 * A server's certificate, key and optional client CA, read from their files: at start (files that
 * cannot be used stop the start with a message naming the setting) and again on `reload()` (files
 * that cannot be used are refused and the certificate in use stays). The store holds the files'
 * texts in memory, as the TLS server must; they never leave it but to that server.
 *
 * Messages name the setting and the file, never anything read from it: a key file's bytes must
 * not reach a log, not even as part of an OpenSSL error.
 */
export class CertificateStore {
  private constructor(
    readonly settings: TlsSettings,
    private loaded: LoadedCertificate,
  ) {}

  /** Reads and checks the files; throws a ConfigurationError naming each setting whose file cannot be used. */
  static load(settings: TlsSettings, nowMs: number = Date.now()): CertificateStore {
    const loading = readCertificateFiles(settings, nowMs);
    if (!loading.ok) {
      throw new ConfigurationError(loading.problems);
    }
    return new CertificateStore(settings, loading.loaded);
  }

  /** What a new TLS connection is served with. */
  get secureContextOptions(): SecureContextFiles {
    return this.loaded.files;
  }

  get certificate(): CertificateSummary {
    return this.loaded.summary;
  }

  /** Whether clients are asked for a certificate (a client CA is configured). */
  get requestsClientCertificates(): boolean {
    return this.settings.clientCaFile !== undefined;
  }

  /** Reads the files again; on any problem keeps the certificate in use. */
  reload(nowMs: number = Date.now()): CertificateReload {
    const loading = readCertificateFiles(this.settings, nowMs);
    if (!loading.ok) {
      return { ok: false, problems: loading.problems };
    }
    this.loaded = loading.loaded;
    return { ok: true, certificate: loading.loaded.summary };
  }
}

function readCertificateFiles(settings: TlsSettings, nowMs: number): Loading {
  const names = tlsVariableNames(settings.listener);
  const problems: string[] = [];
  const certificatePem = readSetting(names.cert, settings.certFile, problems);
  const keyPem = readSetting(names.key, settings.keyFile, problems);
  const clientCaPem = settings.clientCaFile === undefined ? undefined : readSetting(names.clientCa, settings.clientCaFile, problems);

  let certificate: X509Certificate | undefined;
  if (certificatePem !== undefined) {
    certificate = parse(() => new X509Certificate(certificatePem));
    if (!certificate) {
      problems.push(`${names.cert}: ${settings.certFile} holds no PEM certificate`);
    } else if (Date.parse(certificate.validTo) <= nowMs) {
      problems.push(`${names.cert}: the certificate in ${settings.certFile} expired on ${new Date(certificate.validTo).toISOString()}`);
    }
  }
  let key: KeyObject | undefined;
  if (keyPem !== undefined) {
    key = parse(() => createPrivateKey(keyPem));
    if (!key) {
      problems.push(`${names.key}: ${settings.keyFile} holds no unencrypted PEM private key`);
    }
  }
  if (certificate && key && !certificate.checkPrivateKey(key)) {
    problems.push(`${names.key}: the key in ${settings.keyFile} does not match the certificate in ${names.cert}`);
  }
  if (clientCaPem !== undefined && !isPemCertificates(clientCaPem)) {
    problems.push(`${names.clientCa}: ${settings.clientCaFile} holds no PEM CA certificate`);
  }
  if (problems.length > 0 || !certificate || certificatePem === undefined || keyPem === undefined) {
    return { ok: false, problems };
  }
  const files = { cert: certificatePem, key: keyPem, ca: clientCaPem };
  try {
    // What the server will do with them: refused here rather than on a connection.
    createSecureContext(files);
  } catch (error) {
    // OpenSSL's code only: its message could quote what it was parsing.
    const code = (error as { code?: unknown }).code;
    return { ok: false, problems: [`${names.cert}: cannot be served with ${names.key}${typeof code === 'string' ? ` (${code})` : ''}`] };
  }
  return {
    ok: true,
    loaded: {
      files,
      summary: {
        subject: certificate.subject.replace(/\n/g, ', '),
        fingerprint256: certificate.fingerprint256,
        notAfterSeconds: Math.floor(Date.parse(certificate.validTo) / 1_000),
      },
    },
  };
}

function readSetting(name: string, file: string, problems: string[]): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    problems.push(`${name}: cannot read ${file}${typeof code === 'string' ? ` (${code})` : ''}`);
    return undefined;
  }
}

function parse<T>(build: () => T): T | undefined {
  try {
    return build();
  } catch {
    return undefined;
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** At least one certificate, and every PEM certificate block in the file parses. */
function isPemCertificates(pem: string): boolean {
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  return blocks.length > 0 && blocks.every((block) => parse(() => new X509Certificate(block)) !== undefined);
}
