import { createPrivateKey, KeyObject, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';

// Shared by the stores of TLS files (a server's certificate, the VeNCrypt client's): how a file
// named by a setting is read and checked. Messages name the setting and the file, never anything
// read from it: a key file's bytes must not reach a log, not even as part of an OpenSSL error.

/** What logs and metrics may say about a certificate: public facts only, never its key. */
export interface CertificateSummary {
  subject: string;
  /** SHA-256 fingerprint, as `openssl x509 -fingerprint -sha256` prints it. */
  fingerprint256: string;
  /** The end of its validity, in epoch seconds. */
  notAfterSeconds: number;
}

/** The file's text, or undefined with a problem naming the setting pushed onto `problems`. */
export function readSettingFile(name: string, file: string, problems: string[]): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    problems.push(`${name}: cannot read ${file}${typeof code === 'string' ? ` (${code})` : ''}`);
    return undefined;
  }
}

/** A certificate and the key that goes with it, as read from their settings' files. */
export interface CertificateKeyFiles {
  certName: string;
  certFile: string;
  certificatePem: string | undefined;
  keyName: string;
  keyFile: string;
  keyPem: string | undefined;
}

/**
 * Checks a certificate (a PEM certificate, not expired) and its key (an unencrypted PEM private key
 * that matches it). Returns the parsed certificate when both are usable; pushes each problem.
 */
export function checkCertificateAndKey(files: CertificateKeyFiles, nowMs: number, problems: string[]): X509Certificate | undefined {
  const { certName, certFile, certificatePem, keyName, keyFile, keyPem } = files;
  let certificate: X509Certificate | undefined;
  if (certificatePem !== undefined) {
    certificate = parseOrUndefined(() => new X509Certificate(certificatePem));
    if (!certificate) {
      problems.push(`${certName}: ${certFile} holds no PEM certificate`);
    } else if (Date.parse(certificate.validTo) <= nowMs) {
      problems.push(`${certName}: the certificate in ${certFile} expired on ${new Date(certificate.validTo).toISOString()}`);
    }
  }
  let key: KeyObject | undefined;
  if (keyPem !== undefined) {
    key = parseOrUndefined(() => createPrivateKey(keyPem));
    if (!key) {
      problems.push(`${keyName}: ${keyFile} holds no unencrypted PEM private key`);
    }
  }
  if (certificate && key && !certificate.checkPrivateKey(key)) {
    problems.push(`${keyName}: the key in ${keyFile} does not match the certificate in ${certName}`);
    return undefined;
  }
  return certificate && key ? certificate : undefined;
}

/** The public facts of a certificate. */
export function summarizeCertificate(certificate: X509Certificate): CertificateSummary {
  return {
    subject: certificate.subject.replace(/\n/g, ', '),
    fingerprint256: certificate.fingerprint256,
    notAfterSeconds: Math.floor(Date.parse(certificate.validTo) / 1_000),
  };
}

/** OpenSSL's error code only: its message could quote what it was parsing. */
export function openSslCode(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? ` (${code})` : '';
}

export function parseOrUndefined<T>(build: () => T): T | undefined {
  try {
    return build();
  } catch {
    return undefined;
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** At least one certificate, and every PEM certificate block in the file parses. */
export function isPemCertificates(pem: string): boolean {
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  return blocks.length > 0 && blocks.every((block) => parseOrUndefined(() => new X509Certificate(block)) !== undefined);
}
