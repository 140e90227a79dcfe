/** PEM armour: split bundles into typed blocks and wrap DER at 64 columns. */
import { ownedFromBase64 } from '../util/buffers.js';
import { PkiError } from './errors.js';

export interface PemBlock {
  label: string;
  der: Buffer;
}

const BEGIN = '-----BEGIN ';
const END = '-----END ';
const DASHES = '-----';
const BASE64_BODY = /^[A-Za-z0-9+/=\s]*$/;

/** A label character: A-Z, 0-9 or space. */
function isLabelChar(code: number): boolean {
  return (code >= 0x41 && code <= 0x5a) || (code >= 0x30 && code <= 0x39) || code === 0x20;
}

/** The label of a `<marker>LABEL-----` header at `at`, or undefined when none is there. */
function labelAt(text: string, at: number): string | undefined {
  let end = at;
  while (end < text.length && isLabelChar(text.charCodeAt(end))) end++;
  return end > at && text.startsWith(DASHES, end) ? text.slice(at, end) : undefined;
}

/**
 * Every PEM block in `text`, in order. Text outside blocks (comments, `openssl x509 -text` output) is ignored.
 * Runs in linear time: a backtracking regular expression took ~0.4 s of CPU on 64 KiB of repeated BEGIN lines,
 * which any caller could send as a CSR. A block is a BEGIN line, then the first END line with the same label.
 */
export function decodePem(text: string): PemBlock[] {
  // One pass over the END lines, so that finding the END of each BEGIN never rescans the text.
  const endsByLabel = new Map<string, { positions: number[]; next: number }>();
  for (let at = text.indexOf(END); at !== -1; at = text.indexOf(END, at + 1)) {
    const label = labelAt(text, at + END.length);
    if (label === undefined) continue;
    let ends = endsByLabel.get(label);
    if (!ends) endsByLabel.set(label, (ends = { positions: [], next: 0 }));
    ends.positions.push(at);
  }
  const blocks: PemBlock[] = [];
  let from = 0;
  for (let begin = text.indexOf(BEGIN); begin !== -1; begin = text.indexOf(BEGIN, from)) {
    const label = labelAt(text, begin + BEGIN.length);
    const bodyStart = begin + BEGIN.length + (label?.length ?? 0) + DASHES.length;
    const ends = label === undefined ? undefined : endsByLabel.get(label);
    // BEGIN lines are visited in increasing order, so each label's cursor only moves forward.
    while (ends && ends.next < ends.positions.length && ends.positions[ends.next]! < bodyStart) ends.next++;
    const end = ends?.positions[ends.next];
    if (label === undefined || end === undefined) {
      from = begin + 1;
      continue;
    }
    const body = text.slice(bodyStart, end);
    if (!BASE64_BODY.test(body)) throw new PkiError('ERR_PEM', `PEM block "${label}" has a body that is not base64`);
    // Memory of its own: a certificate's DER is often kept for long (chains, roots, parsed certificates).
    const der = ownedFromBase64(body.replace(/\s+/g, ''));
    if (der.length === 0) throw new PkiError('ERR_PEM', `PEM block "${label}" is empty`);
    blocks.push({ label, der });
    from = end + END.length + label.length + DASHES.length;
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
