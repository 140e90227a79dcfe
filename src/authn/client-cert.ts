/**
 * Renewal authentication: a workload presenting a client certificate that the TLS layer verified against our
 * current roots proves the SPIFFE IDs in its URI SANs. The TLS layer only hands over certificates it verified
 * (grpc-js exposes the peer certificate only for authorized sockets), so this checks what TLS does not: that the
 * certificate is a leaf, still valid now, and names SPIFFE IDs.
 */
import { isSpiffeId, parseCertificate, type ParsedCertificate } from '../pki/index.js';
import type { AuthOutcome, AuthRequest, Authenticator } from './types.js';

export class ClientCertAuthenticator implements Authenticator {
  readonly name = 'client-cert' as const;

  constructor(private readonly now: () => number = Date.now) {}

  async authenticate(request: AuthRequest): Promise<AuthOutcome> {
    if (!request.peerCertificateDer) return { kind: 'skip', reason: 'no verified client certificate' };
    let cert: ParsedCertificate;
    try {
      cert = parseCertificate(request.peerCertificateDer);
    } catch (error) {
      return { kind: 'denied', reason: `client certificate cannot be parsed: ${(error as Error).message}` };
    }
    const now = this.now();
    if (cert.notAfter.getTime() < now || cert.notBefore.getTime() > now) {
      return { kind: 'denied', reason: 'client certificate is outside its validity period' };
    }
    if (cert.basicConstraints?.ca) return { kind: 'denied', reason: 'client certificate is a CA certificate' };
    const identities = cert.sans.uris.filter((uri) => isSpiffeId(uri));
    if (identities.length === 0) return { kind: 'denied', reason: 'client certificate has no SPIFFE ID URI SAN' };
    return { kind: 'ok', caller: { authenticator: this.name, identities, subject: identities[0]! } };
  }
}
