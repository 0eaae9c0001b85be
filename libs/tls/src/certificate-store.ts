import { createSecureContext } from 'node:tls';
import { TlsSettings, tlsVariableNames } from '@keyhole/config';
import {
  CertificateSummary,
  checkCertificateAndKey,
  isPemCertificates,
  openSslCode,
  readSettingFile,
  summarizeCertificate,
} from './pem-files';
import { FileLoading, ReloadableFiles } from './reloadable-files';

export type { CertificateSummary } from './pem-files';

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

/**
 * A server's certificate, key and optional client CA, read from their files: at start (files that
 * cannot be used stop the start with a message naming the setting) and again on `reload()` (files
 * that cannot be used are refused and the certificate in use stays). The store holds the files'
 * texts in memory, as the TLS server must; they never leave it but to that server.
 * Messages name the setting and the file, never anything read from them (pem-files.ts).
 */
export class CertificateStore {
  private constructor(private readonly files: ReloadableFiles<TlsSettings, LoadedCertificate>) {}

  /** Reads and checks the files; throws a ConfigurationError naming each setting whose file cannot be used. */
  static load(settings: TlsSettings, nowMs: number = Date.now()): CertificateStore {
    return new CertificateStore(ReloadableFiles.load(settings, readCertificateFiles, nowMs));
  }

  get settings(): TlsSettings {
    return this.files.settings;
  }

  /** What a new TLS connection is served with. */
  get secureContextOptions(): SecureContextFiles {
    return this.files.loaded.files;
  }

  get certificate(): CertificateSummary {
    return this.files.loaded.summary;
  }

  /** Whether clients are asked for a certificate (a client CA is configured). */
  get requestsClientCertificates(): boolean {
    return this.settings.clientCaFile !== undefined;
  }

  /** Reads the files again; on any problem keeps the certificate in use. */
  reload(nowMs: number = Date.now()): CertificateReload {
    const loading = this.files.reload(nowMs);
    return loading.ok ? { ok: true, certificate: loading.loaded.summary } : { ok: false, problems: loading.problems };
  }
}

function readCertificateFiles(settings: TlsSettings, nowMs: number): FileLoading<LoadedCertificate> {
  const names = tlsVariableNames(settings.listener);
  const problems: string[] = [];
  const certificatePem = readSettingFile(names.cert, settings.certFile, problems);
  const keyPem = readSettingFile(names.key, settings.keyFile, problems);
  const clientCaPem = settings.clientCaFile === undefined ? undefined : readSettingFile(names.clientCa, settings.clientCaFile, problems);
  const certificate = checkCertificateAndKey(
    { certName: names.cert, certFile: settings.certFile, certificatePem, keyName: names.key, keyFile: settings.keyFile, keyPem },
    nowMs,
    problems,
  );
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
    return { ok: false, problems: [`${names.cert}: cannot be served with ${names.key}${openSslCode(error)}`] };
  }
  return { ok: true, loaded: { files, summary: summarizeCertificate(certificate) } };
}
