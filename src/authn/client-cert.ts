/**
 * Renewal authentication: a workload presenting a client certificate that the TLS layer verified against our
 * current roots proves the workload identity in its URI SAN. The TLS layer only hands over certificates it
 * verified (grpc-js exposes the peer certificate only for authorized sockets), so this checks what TLS does not:
 * that the certificate is a leaf, still valid now, and names exactly one identity of the form this CA issues,
 * spiffe://<our trust domain>/ns/<ns>/sa/<sa>. Roots are often shared between clusters and meshes, so a chain
 * that verifies proves nothing about which trust domain the holder belongs to; the URI SAN must say ours, or
 * one of our trust-domain aliases (a former trust domain): that certificate is renewed in the current one.
 */
import { parseCertificate, WorkloadId, type ParsedCertificate } from '../pki/index.js';
import { TrustDomains } from './trust-domains.js';
import type { AuthOutcome, AuthRequest, Authenticator } from './types.js';

export interface ClientCertAuthenticatorOptions {
  /** The CA's trust domain: only certificates for it (or for an alias) are renewed, always in this one. */
  trustDomain: string;
  /** --trust-domain-aliases: former trust domains whose certificates are renewed in `trustDomain`. */
  trustDomainAliases?: readonly string[];
  now?: () => number;
}

function limit(text: string, max = 200): string {
  return text.length > max ? `${text.slice(0, max - 3)}...` : text;
}

export class ClientCertAuthenticator implements Authenticator {
  readonly name = 'client-cert' as const;
  private readonly trustDomains: TrustDomains;
  private readonly now: () => number;

  constructor(options: ClientCertAuthenticatorOptions) {
    this.trustDomains = new TrustDomains(options.trustDomain, options.trustDomainAliases);
    this.now = options.now ?? Date.now;
  }

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
    const uris = cert.sans.uris;
    if (uris.length === 0) return { kind: 'denied', reason: 'client certificate has no SPIFFE ID URI SAN' };
    if (uris.length > 1) {
      return { kind: 'denied', reason: `client certificate has ${uris.length} URI SANs; a workload certificate carries exactly one SPIFFE ID` };
    }
    let identity: WorkloadId;
    try {
      identity = WorkloadId.parse(uris[0]!);
    } catch (error) {
      return { kind: 'denied', reason: `client certificate URI SAN is not a workload identity: ${limit((error as Error).message)}` };
    }
    const accepted = this.trustDomains.accept(identity);
    if (!accepted) return { kind: 'denied', reason: this.trustDomains.foreignTrustDomain('client certificate', identity) };
    // The subject stays the certificate's own URI SAN: the audit line shows what was presented.
    const caller = { authenticator: this.name, identity: accepted.identity, subject: identity.uri };
    return { kind: 'ok', caller: accepted.migratedFrom ? { ...caller, migratedFrom: accepted.migratedFrom } : caller };
  }
}
