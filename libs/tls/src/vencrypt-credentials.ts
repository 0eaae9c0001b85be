import { createSecureContext, SecureContext } from 'node:tls';
import { VENCRYPT_VARIABLE_NAMES, VencryptSettings } from '@keyhole/config';
import {
  CertificateSummary,
  checkCertificateAndKey,
  isPemCertificates,
  openSslCode,
  readSettingFile,
  summarizeCertificate,
} from './pem-files';
import { FileLoading, ReloadableFiles } from './reloadable-files';

/** A reload's outcome: what is used now, or why the files were refused (the previous ones stay). */
export type VencryptReload = { ok: true; clientCertificate: CertificateSummary | null } | { ok: false; problems: string[] };

interface LoadedCredentials {
  secureContext: SecureContext;
  clientCertificate: CertificateSummary | null;
}

/**
 * What the console proxy's VeNCrypt client trusts and presents to hypervisors: the CA that must have
 * signed a hypervisor's certificate and, optionally, the proxy's own client certificate and key.
 * Read at start (files that cannot be used stop the start, naming the setting) and again on
 * `reload()` (files that cannot be used are refused, and the ones in use stay). The files are kept
 * only as the TLS context built from them.
 */
export class VencryptCredentials {
  private constructor(private readonly files: ReloadableFiles<VencryptSettings, LoadedCredentials>) {}

  /** Reads and checks the files; throws a ConfigurationError naming each setting whose file cannot be used. */
  static load(settings: VencryptSettings, nowMs: number = Date.now()): VencryptCredentials {
    return new VencryptCredentials(ReloadableFiles.load(settings, readVencryptFiles, nowMs));
  }

  get settings(): VencryptSettings {
    return this.files.settings;
  }

  /** The TLS context a new VeNCrypt connection is opened with (CA, client certificate and key). */
  get secureContext(): SecureContext {
    return this.files.loaded.secureContext;
  }

  /** The client certificate presented, or null when none is configured. */
  get clientCertificate(): CertificateSummary | null {
    return this.files.loaded.clientCertificate;
  }

  /** Reads the files again; on any problem keeps the ones in use. */
  reload(nowMs: number = Date.now()): VencryptReload {
    const loading = this.files.reload(nowMs);
    return loading.ok ? { ok: true, clientCertificate: loading.loaded.clientCertificate } : { ok: false, problems: loading.problems };
  }
}

function readVencryptFiles(settings: VencryptSettings, nowMs: number): FileLoading<LoadedCredentials> {
  const names = VENCRYPT_VARIABLE_NAMES;
  const problems: string[] = [];
  const caPem = readSettingFile(names.ca, settings.caFile, problems);
  if (caPem !== undefined && !isPemCertificates(caPem)) {
    problems.push(`${names.ca}: ${settings.caFile} holds no PEM CA certificate`);
  }
  let client: { cert: string; key: string; summary: CertificateSummary } | undefined;
  if (settings.clientCertFile !== undefined && settings.clientKeyFile !== undefined) {
    const certificatePem = readSettingFile(names.clientCert, settings.clientCertFile, problems);
    const keyPem = readSettingFile(names.clientKey, settings.clientKeyFile, problems);
    const certificate = checkCertificateAndKey(
      {
        certName: names.clientCert,
        certFile: settings.clientCertFile,
        certificatePem,
        keyName: names.clientKey,
        keyFile: settings.clientKeyFile,
        keyPem,
      },
      nowMs,
      problems,
    );
    if (certificate && certificatePem !== undefined && keyPem !== undefined) {
      client = { cert: certificatePem, key: keyPem, summary: summarizeCertificate(certificate) };
    }
  }
  if (problems.length > 0 || caPem === undefined) {
    return { ok: false, problems };
  }
  try {
    const secureContext = createSecureContext({ ca: caPem, ...(client ? { cert: client.cert, key: client.key } : {}) });
    return { ok: true, loaded: { secureContext, clientCertificate: client?.summary ?? null } };
  } catch (error) {
    return { ok: false, problems: [`${names.ca}: cannot be used with ${names.clientCert}${openSslCode(error)}`] };
  }
}
