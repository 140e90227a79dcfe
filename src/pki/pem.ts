/** PEM armour: split bundles into typed blocks and wrap DER at 64 columns. */
import { PkiError } from './errors.js';

export interface PemBlock {
  label: string;
  der: Buffer;
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;
const BASE64_BODY = /^[A-Za-z0-9+/=\s]*$/;

/** Every PEM block in `text`, in order. Text outside blocks (comments, `openssl x509 -text` output) is ignored. */
export function decodePem(text: string): PemBlock[] {
  const blocks: PemBlock[] = [];
  for (const match of text.matchAll(PEM_BLOCK)) {
    const body = match[2]!;
    if (!BASE64_BODY.test(body)) throw new PkiError('ERR_PEM', `PEM block "${match[1]}" has a body that is not base64`);
    const der = Buffer.from(body.replace(/\s+/g, ''), 'base64');
    if (der.length === 0) throw new PkiError('ERR_PEM', `PEM block "${match[1]}" is empty`);
    blocks.push({ label: match[1]!, der });
  }
  return blocks;
}

/** The DER of the single block with one of `labels`; a precise error otherwise. */
export function decodeSinglePem(text: string, labels: readonly string[], what: string): Buffer {
  const blocks = decodePem(text);
  if (blocks.length === 0) throw new PkiError('ERR_PEM', `${what} is not PEM (no -----BEGIN ${labels[0]}----- block)`);
  const wanted = blocks.filter((b) => labels.includes(b.label));
  if (wanted.length === 0) {
    throw new PkiError('ERR_PEM', `${what} is PEM of type "${blocks[0]!.label}", expected "${labels[0]}"`);
  }
  if (wanted.length > 1) throw new PkiError('ERR_PEM', `${what} holds ${wanted.length} ${labels[0]} blocks, expected one`);
  return wanted[0]!.der;
}

export function encodePem(label: string, der: Buffer): string {
  const base64 = der.toString('base64');
  let body = '';
  for (let i = 0; i < base64.length; i += 64) body += base64.slice(i, i + 64) + '\n';
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
}

export const certificateToPem = (der: Buffer): string => encodePem('CERTIFICATE', der);

/** DER of every CERTIFICATE block in a bundle (other block types are ignored). */
export function certificatesFromPem(text: string): Buffer[] {
  return decodePem(text)
    .filter((b) => b.label === 'CERTIFICATE')
    .map((b) => b.der);
}
