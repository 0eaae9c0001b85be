import { TLSSocket } from 'node:tls';

/**
 * The identity a verified client certificate claims: its subject's one common name (CN), which
 * names an API credential by id (README's TLS). Null when the connection is plain, when the
 * client sent no certificate, when it did not verify against the client CA (such connections are
 * closed before a request is read anyway), or when the subject has no CN or several.
 */
export function verifiedClientCommonName(socket: unknown): string | null {
  if (!(socket instanceof TLSSocket) || !socket.authorized) {
    return null;
  }
  const commonName = socket.getPeerCertificate().subject?.CN as unknown;
  return typeof commonName === 'string' && commonName.length > 0 ? commonName : null;
}
