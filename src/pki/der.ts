/**
 * Minimal DER encoding and reading: just what certificates and CSRs need.
 * Encoders return Buffers so that callers can precompute constant parts once
 * and concatenate them on the hot path.
 */
import { PkiError } from './errors.js';

export const Tag = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

function encodeLength(length: number): Buffer {
  if (length < 0x80) return Buffer.from([length]);
  if (length < 0x100) return Buffer.from([0x81, length]);
  if (length < 0x10000) return Buffer.from([0x82, length >> 8, length & 0xff]);
  if (length < 0x1000000) return Buffer.from([0x83, length >> 16, (length >> 8) & 0xff, length & 0xff]);
  throw new PkiError('ERR_DER_ENCODE', `DER value too long (${length} bytes)`);
}

/** Bytes taken by the tag and length of an element with `length` content bytes. */
export function headerLength(length: number): number {
  if (length < 0x80) return 2;
  if (length < 0x100) return 3;
  if (length < 0x10000) return 4;
  if (length < 0x1000000) return 5;
  throw new PkiError('ERR_DER_ENCODE', `DER value too long (${length} bytes)`);
}

/**
 * Writes a tag and length at `offset` and returns the offset after them. With `headerLength` this lets the hot
 * path size a whole structure first and then fill one buffer, instead of concatenating small ones.
 */
export function writeHeader(target: Buffer, offset: number, tag: number, length: number): number {
  target[offset++] = tag;
  if (length < 0x80) {
    target[offset++] = length;
  } else if (length < 0x100) {
    target[offset++] = 0x81;
    target[offset++] = length;
  } else if (length < 0x10000) {
    target[offset++] = 0x82;
    target[offset++] = length >> 8;
    target[offset++] = length & 0xff;
  } else if (length < 0x1000000) {
    target[offset++] = 0x83;
    target[offset++] = length >> 16;
    target[offset++] = (length >> 8) & 0xff;
    target[offset++] = length & 0xff;
  } else {
    throw new PkiError('ERR_DER_ENCODE', `DER value too long (${length} bytes)`);
  }
  return offset;
}

/** Tag-length-value with the given contents concatenated. */
function tlv(tag: number, ...contents: Buffer[]): Buffer {
  const body = contents.length === 1 ? contents[0]! : Buffer.concat(contents);
  return Buffer.concat([Buffer.from([tag]), encodeLength(body.length), body]);
}

export const sequence = (...items: Buffer[]): Buffer => tlv(Tag.SEQUENCE, ...items);
export const set = (...items: Buffer[]): Buffer => tlv(Tag.SET, ...items);
export const octetString = (value: Buffer): Buffer => tlv(Tag.OCTET_STRING, value);
export const bitString = (value: Buffer): Buffer => tlv(Tag.BIT_STRING, Buffer.from([0]), value);
export const utf8String = (value: string): Buffer => tlv(Tag.UTF8_STRING, Buffer.from(value, 'utf8'));
export const boolean = (value: boolean): Buffer => Buffer.from([Tag.BOOLEAN, 1, value ? 0xff : 0]);
export const nullValue = (): Buffer => Buffer.from([Tag.NULL, 0]);
/** Context-specific constructed tag [n] EXPLICIT. */
export const explicit = (n: number, ...contents: Buffer[]): Buffer => tlv(0xa0 | n, ...contents);
/** Context-specific primitive tag [n] IMPLICIT (e.g. GeneralName choices). */
export const implicitPrimitive = (n: number, value: Buffer): Buffer => tlv(0x80 | n, value);

/** INTEGER from unsigned big-endian bytes (adds a leading zero when the top bit is set). */
export function unsignedInteger(bytes: Buffer): Buffer {
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0 && (bytes[start + 1]! & 0x80) === 0) start++;
  const trimmed = bytes.subarray(start);
  return (trimmed[0]! & 0x80) !== 0 ? tlv(Tag.INTEGER, Buffer.from([0]), trimmed) : tlv(Tag.INTEGER, trimmed);
}

export function smallInteger(value: number): Buffer {
  if (!Number.isInteger(value) || value < 0 || value > 0x7fffffff) {
    throw new PkiError('ERR_DER_ENCODE', `integer out of range: ${value}`);
  }
  const bytes: number[] = [];
  let rest = value;
  do {
    bytes.unshift(rest & 0xff);
    rest = Math.floor(rest / 256);
  } while (rest > 0);
  if (bytes[0]! & 0x80) bytes.unshift(0);
  return tlv(Tag.INTEGER, Buffer.from(bytes));
}

export function oid(dotted: string): Buffer {
  const parts = dotted.split('.').map((p) => Number(p));
  if (parts.length < 2 || parts.some((p) => !Number.isInteger(p) || p < 0)) {
    throw new PkiError('ERR_DER_ENCODE', `bad OID ${dotted}`);
  }
  const out: number[] = [parts[0]! * 40 + parts[1]!];
  for (const part of parts.slice(2)) {
    const chunk: number[] = [part & 0x7f];
    let rest = Math.floor(part / 128);
    while (rest > 0) {
      chunk.unshift((rest & 0x7f) | 0x80);
      rest = Math.floor(rest / 128);
    }
    out.push(...chunk);
  }
  return tlv(Tag.OID, Buffer.from(out));
}

/** Decodes OID contents; refuses non-minimal arcs (a leading 0x80 byte), an unterminated last arc and huge arcs. */
export function decodeOid(contents: Buffer): string {
  if (contents.length === 0) throw new PkiError('ERR_DER_PARSE', 'empty OID');
  const parts: number[] = [];
  let value = 0;
  let arcStart = true;
  for (let i = 0; i < contents.length; i++) {
    const byte = contents[i]!;
    if (arcStart && byte === 0x80) throw new PkiError('ERR_DER_PARSE', 'OID arc is not minimally encoded');
    value = value * 128 + (byte & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER / 128) throw new PkiError('ERR_DER_PARSE', 'OID arc is too large');
    arcStart = (byte & 0x80) === 0;
    if (arcStart) {
      if (parts.length === 0) parts.push(...(value < 80 ? [Math.floor(value / 40), value % 40] : [2, value - 80]));
      else parts.push(value);
      value = 0;
    }
  }
  if (!arcStart) throw new PkiError('ERR_DER_PARSE', 'OID ends inside an arc');
  return parts.join('.');
}

const pad2 = (n: number): string => (n < 10 ? `0${n}` : String(n));

/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, Zulu. */
export function time(date: Date): Buffer {
  const year = date.getUTCFullYear();
  const rest =
    pad2(date.getUTCMonth() + 1) +
    pad2(date.getUTCDate()) +
    pad2(date.getUTCHours()) +
    pad2(date.getUTCMinutes()) +
    pad2(date.getUTCSeconds()) +
    'Z';
  if (year >= 1950 && year < 2050) return tlv(Tag.UTC_TIME, Buffer.from(pad2(year % 100) + rest, 'ascii'));
  return tlv(Tag.GENERALIZED_TIME, Buffer.from(String(year).padStart(4, '0') + rest, 'ascii'));
}

export function decodeTime(tag: number, contents: Buffer): Date {
  const text = contents.toString('ascii');
  const match =
    tag === Tag.UTC_TIME
      ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text)
      : /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text);
  if (!match) throw new PkiError('ERR_DER_PARSE', `unsupported time encoding "${text}"`);
  let year = Number(match[1]);
  if (tag === Tag.UTC_TIME) year += year < 50 ? 2000 : 1900;
  return new Date(
    Date.UTC(year, Number(match[2]) - 1, Number(match[3]), Number(match[4]), Number(match[5]), Number(match[6])),
  );
}

/** One decoded element: `raw` is the whole TLV, `contents` its value. Both are views on the input. */
export interface DerElement {
  tag: number;
  raw: Buffer;
  contents: Buffer;
}

/** Reads the element at `offset`; throws PkiError on truncation, indefinite or non-minimal lengths and multi-byte tags. */
export function readElement(input: Buffer, offset = 0): DerElement {
  if (offset + 2 > input.length) throw new PkiError('ERR_DER_PARSE', 'truncated DER');
  const tag = input[offset]!;
  if ((tag & 0x1f) === 0x1f) throw new PkiError('ERR_DER_PARSE', 'multi-byte tags are not supported');
  let lengthByte = input[offset + 1]!;
  let headerLength = 2;
  let length: number;
  if (lengthByte < 0x80) {
    length = lengthByte;
  } else {
    lengthByte &= 0x7f;
    if (lengthByte === 0) throw new PkiError('ERR_DER_PARSE', 'indefinite length is not DER');
    if (lengthByte > 4) throw new PkiError('ERR_DER_PARSE', 'DER length too large');
    if (offset + 2 + lengthByte > input.length) throw new PkiError('ERR_DER_PARSE', 'truncated DER length');
    // DER (X.690 10.1): the long form only for lengths >= 128, and with no leading zero byte.
    if (input[offset + 2] === 0) throw new PkiError('ERR_DER_PARSE', 'non-minimal DER length (leading zero byte)');
    length = 0;
    for (let i = 0; i < lengthByte; i++) length = length * 256 + input[offset + 2 + i]!;
    if (length < 0x80) throw new PkiError('ERR_DER_PARSE', 'non-minimal DER length (long form for a short length)');
    headerLength += lengthByte;
  }
  const end = offset + headerLength + length;
  if (end > input.length) throw new PkiError('ERR_DER_PARSE', 'truncated DER');
  return { tag, raw: input.subarray(offset, end), contents: input.subarray(offset + headerLength, end) };
}

/** The children of a constructed element, in order. */
export function children(element: DerElement | Buffer): DerElement[] {
  const contents = Buffer.isBuffer(element) ? element : element.contents;
  const out: DerElement[] = [];
  let offset = 0;
  while (offset < contents.length) {
    const child = readElement(contents, offset);
    out.push(child);
    offset += child.raw.length;
  }
  return out;
}

/** Reads exactly one element spanning the whole input (rejects trailing bytes). */
export function readSingle(input: Buffer, what: string): DerElement {
  const element = readElement(input, 0);
  if (element.raw.length !== input.length) throw new PkiError('ERR_DER_PARSE', `trailing bytes after ${what}`);
  return element;
}

/**
 * The outer SEQUENCE of a signed structure (certificate, CSR). A fault this deep means the input is no such thing at
 * all, so it is reported through the caller's `malformed` (its own code), not as a bare ERR_DER_PARSE.
 */
export function readTopSequence(der: Buffer, what: string, malformed: (message: string) => Error): DerElement {
  try {
    return expectTag(readSingle(der, what), Tag.SEQUENCE, what);
  } catch (error) {
    throw malformed(`${what} is not valid DER: ${(error as Error).message}`);
  }
}

export function expectTag(element: DerElement | undefined, tag: number, what: string): DerElement {
  if (!element || element.tag !== tag) {
    throw new PkiError('ERR_DER_PARSE', `malformed ${what}`);
  }
  return element;
}

/** The magnitude of a non-negative INTEGER in minimal DER (X.690 8.3.2); throws on empty, negative or padded forms. */
export function readUnsignedInteger(element: DerElement | undefined, what: string): Buffer {
  const bytes = expectTag(element, Tag.INTEGER, what).contents;
  if (bytes.length === 0) throw new PkiError('ERR_DER_PARSE', `${what} is an empty INTEGER`);
  if ((bytes[0]! & 0x80) !== 0) throw new PkiError('ERR_DER_PARSE', `${what} is negative`);
  if (bytes[0] === 0 && bytes.length > 1) {
    if ((bytes[1]! & 0x80) === 0) throw new PkiError('ERR_DER_PARSE', `${what} is not a minimal INTEGER encoding`);
    return bytes.subarray(1);
  }
  return bytes;
}

const MAX_DER_DEPTH = 32;

// Universal types accepted in primitive form inside opaque values: BOOLEAN, INTEGER, BIT STRING, OCTET STRING, NULL,
// OID, ENUMERATED, UTF8String, the character strings 18-22 and 25-30, UTCTime and GeneralizedTime. Not: 0 (end of
// contents), 7-9, 11, 13-15 (rare or reserved types), 16-17 (SEQUENCE and SET are constructed).
const PRIMITIVE_UNIVERSAL_TAGS = new Set([1, 2, 3, 4, 5, 6, 10, 12, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]);

/**
 * Checks that an element we do not interpret (a name, an unknown attribute or extension) is strict DER all the way
 * down: constructed forms only for SEQUENCE, SET and tagged values (BER's constructed strings are refused), and
 * BOOLEAN, INTEGER, ENUMERATED, NULL, OID and BIT STRING in their single DER form. Lengths and trailing bytes are
 * already checked by `readElement`/`children`.
 */
export function assertDer(element: DerElement, what: string, depth = 0): void {
  if (depth > MAX_DER_DEPTH) throw new PkiError('ERR_DER_PARSE', `${what} is nested too deeply`);
  const tag = element.tag;
  const constructed = (tag & 0x20) !== 0;
  if ((tag & 0xc0) !== 0) {
    // Context-specific, application or private: contents are opaque unless constructed.
    if (constructed) for (const child of children(element)) assertDer(child, what, depth + 1);
    return;
  }
  if (constructed) {
    if (tag !== Tag.SEQUENCE && tag !== Tag.SET) {
      throw new PkiError('ERR_DER_PARSE', `${what} has a constructed encoding of universal tag ${tag & 0x1f} (BER, not DER)`);
    }
    for (const child of children(element)) assertDer(child, what, depth + 1);
    return;
  }
  const contents = element.contents;
  if (!PRIMITIVE_UNIVERSAL_TAGS.has(tag)) {
    throw new PkiError('ERR_DER_PARSE', `${what} has an element with universal tag ${tag} that is reserved, constructed-only or not accepted`);
  }
  switch (tag) {
    case Tag.BOOLEAN:
      if (contents.length !== 1 || (contents[0] !== 0 && contents[0] !== 0xff)) {
        throw new PkiError('ERR_DER_PARSE', `${what} has a BOOLEAN that is not DER (one byte, 0x00 or 0xff)`);
      }
      return;
    case Tag.INTEGER:
    case 0x0a:
      if (contents.length === 0 || (contents.length > 1 && ((contents[0] === 0 && (contents[1]! & 0x80) === 0) || (contents[0] === 0xff && (contents[1]! & 0x80) !== 0)))) {
        throw new PkiError('ERR_DER_PARSE', `${what} has an INTEGER that is not minimally encoded`);
      }
      return;
    case Tag.NULL:
      if (contents.length !== 0) throw new PkiError('ERR_DER_PARSE', `${what} has a NULL with contents`);
      return;
    case Tag.OID:
      decodeOid(contents);
      return;
    case Tag.BIT_STRING: {
      const unused = contents[0];
      if (unused === undefined || unused > 7 || (contents.length === 1 && unused !== 0)) {
        throw new PkiError('ERR_DER_PARSE', `${what} has a malformed BIT STRING`);
      }
      if (unused !== 0 && (contents[contents.length - 1]! & ((1 << unused) - 1)) !== 0) {
        throw new PkiError('ERR_DER_PARSE', `${what} has a BIT STRING whose unused bits are not zero`);
      }
      return;
    }
    default:
      return;
  }
}

/** True when `input` is exactly one DER SEQUENCE with nothing after it: the shape of a DER file of any PKI object. */
export function isSingleDerSequence(input: Buffer): boolean {
  try {
    return readSingle(input, 'the input').tag === Tag.SEQUENCE;
  } catch {
    return false;
  }
}
