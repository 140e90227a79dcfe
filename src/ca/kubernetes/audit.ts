/**
 * Certificates the Kubernetes plugins issue get the CA's audit line and issuance count, as CreateCertificate's do:
 * the plugin reports each one it has written to the API, and the CA (commands/ca.ts) writes the line.
 */
import { X509Certificate } from 'node:crypto';

export interface IssuanceRecord {
  /** The plugin: "csr-signer", "pod-certificates". */
  via: string;
  /** Who asked: the CSR's requester, or the pod (namespace/name) whose kubelet filed the request. */
  caller: string;
  /** The Kubernetes object answered, namespace/name or name. */
  object: string;
  spiffeId: string;
  serial: string;
  notAfter: string;
}

/** The record of a chain's leaf (the first PEM block of `chainPem`). */
export function issuanceRecord(chainPem: string, fields: Pick<IssuanceRecord, 'via' | 'caller' | 'object'>): IssuanceRecord {
  const leaf = new X509Certificate(chainPem);
  const uri = /URI:([^,\s]+)/.exec(leaf.subjectAltName ?? '')?.[1] ?? '';
  return { ...fields, spiffeId: uri, serial: leaf.serialNumber.toLowerCase(), notAfter: new Date(leaf.validTo).toISOString() };
}
