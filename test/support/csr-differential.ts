/**
 * Differential check of meshca's CSR acceptance against parsers we did not write, shared by the quick run in
 * `npm test` (test/csr-differential.test.ts) and the long run in `npm run fuzz` (test/fuzz/csr-differential.fuzz.ts).
 *
 * Valid CSRs (RSA-2048, P-256, P-384; ours and OpenSSL's) are mutated structurally (tags, length forms, indefinite
 * lengths, bytes appended inside any element, padded INTEGERs, dropped or repeated fields, version, BIT STRING
 * unused bits, compressed/hybrid/off-curve points, RSA exponents, signature-algorithm parameters, RSASSA-PSS) and
 * byte-wise (bit flips, truncation, appended bytes), usually re-signed after the mutation so that the signature is
 * valid over the mutated content. Each mutant goes through the real issuance path (CertificateAuthority with a
 * LocalSigner). Whenever meshca issues, all of this must hold on the same bytes:
 *  - @peculiar/asn1-csr parses them and re-serialises them byte for byte (so they are canonical DER);
 *  - the signature verifies (node:crypto, OpenSSL's SPKI decoder) over the CertificationRequestInfo bytes that parser
 *    located, with the algorithm's standard parameters (NULL for RSA PKCS#1 v1.5, absent for ECDSA);
 *  - OpenSSL re-exports the key as exactly the CSR's SPKI (canonical key encoding);
 *  - for a sample, `openssl req -verify` accepts the bytes;
 *  - the leaf certifies exactly that canonical SPKI (read back with @peculiar/asn1-x509).
 * Refusals must be CaError CSR_ERROR caused by a PkiError; they are counted by code.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createPublicKey, sign, verify, constants, type KeyObject } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { CertificationRequest } from '@peculiar/asn1-csr';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate } from '@peculiar/asn1-x509';
import fc from 'fast-check';
import { buildCaMaterial, CaError, CertificateAuthority, LocalSigner } from '../../src/ca/index.js';
import { createCaCertificate, createCsr, encodePem, generateKeyPairFor, isPkiError, parseCertificate, WorkloadId } from '../../src/pki/index.js';
import { makeTempDir } from './process.js';

// ---------------------------------------------------------------------------------------------------------------
// A lenient TLV tree of a valid CSR, which mutations edit and then write back (with every length recomputed).

type LengthForm = 'minimal' | 'long1' | 'long2' | 'leadingZero' | 'indefinite';

interface Node {
  tag: number;
  form: LengthForm;
  /** Primitive contents, or for an encapsulating BIT/OCTET STRING the bytes before its inner element. */
  contents: Buffer;
  children?: Node[];
  /** Bytes written after the contents, inside this element's length. */
  extra?: Buffer;
}

function readTlv(input: Buffer, offset: number): { tag: number; start: number; end: number } {
  const tag = input[offset]!;
  let length = input[offset + 1]!;
  let start = offset + 2;
  if (length & 0x80) {
    const count = length & 0x7f;
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + input[start + i]!;
    start += count;
  }
  return { tag, start, end: start + length };
}

function parseTree(input: Buffer, offset = 0): { node: Node; end: number } {
  const { tag, start, end } = readTlv(input, offset);
  const body = input.subarray(start, end);
  const node: Node = { tag, form: 'minimal', contents: Buffer.alloc(0) };
  if (tag & 0x20) {
    node.children = [];
    for (let at = 0; at < body.length; ) {
      const child = parseTree(body, at);
      node.children.push(child.node);
      at = child.end;
    }
  } else {
    // BIT STRING { 0, SEQUENCE } and OCTET STRING { SEQUENCE } hold DER inside (keys, extension values): descend.
    const prefix = tag === 0x03 ? 1 : tag === 0x04 ? 0 : -1;
    if (prefix >= 0 && body.length > prefix + 1 && body[prefix] === 0x30 && (tag !== 0x03 || body[0] === 0)) {
      const inner = readTlv(body, prefix);
      if (inner.end === body.length) {
        node.contents = Buffer.from(body.subarray(0, prefix));
        node.children = [parseTree(body, prefix).node];
        return { node, end };
      }
    }
    node.contents = Buffer.from(body);
  }
  return { node, end };
}

function lengthBytes(length: number, form: LengthForm): Buffer {
  const minimal = length < 0x80 ? [length] : length < 0x100 ? [0x81, length] : [0x82, length >> 8, length & 0xff];
  switch (form) {
    case 'minimal':
    case 'indefinite':
      return Buffer.from(minimal);
    case 'long1':
      return length < 0x100 ? Buffer.from([0x81, length]) : Buffer.from(minimal);
    case 'long2':
      return Buffer.from([0x82, length >> 8, length & 0xff]);
    case 'leadingZero':
      return Buffer.from([0x83, 0, length >> 8, length & 0xff]);
  }
}

function writeTree(node: Node): Buffer {
  const body = Buffer.concat([node.contents, ...(node.children ?? []).map(writeTree), node.extra ?? Buffer.alloc(0)]);
  if (node.form === 'indefinite') return Buffer.concat([Buffer.from([node.tag, 0x80]), body, Buffer.from([0, 0])]);
  return Buffer.concat([Buffer.from([node.tag]), lengthBytes(body.length, node.form), body]);
}

function allNodes(node: Node, out: { node: Node; parent?: Node }[] = [], parent?: Node): { node: Node; parent?: Node }[] {
  out.push(parent ? { node, parent } : { node });
  for (const child of node.children ?? []) allNodes(child, out, node);
  return out;
}

const clone = (node: Node): Node => ({
  tag: node.tag,
  form: node.form,
  contents: Buffer.from(node.contents),
  ...(node.children ? { children: node.children.map(clone) } : {}),
  ...(node.extra ? { extra: Buffer.from(node.extra) } : {}),
});

// ---------------------------------------------------------------------------------------------------------------
// Seeds and mutations

interface Seed {
  name: string;
  der: Buffer;
  privateKey: KeyObject;
  hash: 'sha256' | 'sha384';
  kind: 'rsa' | 'ec';
}

const OP_NAMES = [
  'tag',
  'lengthForm',
  'indefinite',
  'extraInside',
  'integerPadding',
  'deleteChild',
  'repeatChild',
  'version',
  'unusedBits',
  'ecPoint',
  'rsaExponent',
  'signatureParameters',
  'contentByte',
  'subjectName',
  'attribute',
  'criticalFalse',
] as const;
type OpName = (typeof OP_NAMES)[number];

export interface MutationPlan {
  seed: number;
  ops: [number, number, number][];
  resign: boolean;
  bytes: [number, number, number][];
}

export const mutationPlanArbitrary: fc.Arbitrary<MutationPlan> = fc.record({
  seed: fc.nat(),
  ops: fc.array(fc.tuple(fc.nat({ max: OP_NAMES.length - 1 }), fc.nat(), fc.nat()), { minLength: 0, maxLength: 3 }),
  // Mostly re-signed, so that the signature is valid over the mutated content and only the parser stands guard.
  resign: fc.integer({ min: 0, max: 9 }).map((n) => n < 7),
  bytes: fc.array(fc.tuple(fc.nat({ max: 2 }), fc.nat(), fc.nat({ max: 255 })), { minLength: 0, maxLength: 2 }),
});

const pick = <T>(items: readonly T[], n: number): T => items[n % items.length]!;
const oidNode = (hex: string): Node => ({ tag: 0x06, form: 'minimal', contents: Buffer.from(hex, 'hex') });
const OID_CN = '550403';
const OID_CHALLENGE_PASSWORD = '2a864886f70d010907';
const OID_RSASSA_PSS = '2a864886f70d01010a';
const BIG_EXPONENT = (() => {
  const e = Buffer.alloc(383, 0xab); // 3063 bits: the review's example
  e[0] = 0x7f;
  e[e.length - 1]! |= 1;
  return e;
})();

interface MutationState {
  root: Node;
  pss: boolean;
}

function applyOp(state: MutationState, seed: Seed, op: OpName, a: number, b: number): void {
  const root = state.root;
  const nodes = allNodes(root);
  const { node, parent } = pick(nodes, a);
  const info = root.children?.[0];
  const spki = info?.children?.[2];
  switch (op) {
    case 'tag':
      node.tag = pick([node.tag ^ 0x20, node.tag ^ 0x01, b & 0xff, 0x04, 0x30, 0x31, 0x02, 0xa0, 0x80, 0x1f, 0x00, 0x24, 0x23], b);
      break;
    case 'lengthForm':
      node.form = pick(['long1', 'long2', 'leadingZero'] as const, b);
      break;
    case 'indefinite':
      node.form = 'indefinite';
      break;
    case 'extraInside':
      node.extra = pick([Buffer.from([0]), Buffer.from([0x05, 0x00]), Buffer.from([0x00, 0x00]), Buffer.from([b & 0xff]), Buffer.from([0x02, 0x01, 0x00])], b);
      break;
    case 'integerPadding': {
      const integers = nodes.filter((n) => n.node.tag === 0x02);
      const target = integers.length > 0 ? pick(integers, b).node : node;
      target.contents = Buffer.concat([Buffer.from([b % 2 === 0 ? 0x00 : 0xff]), target.contents]);
      break;
    }
    case 'deleteChild':
      if (node.children && node.children.length > 0) node.children.splice(b % node.children.length, 1);
      break;
    case 'repeatChild':
      if (node.children && node.children.length > 0) {
        const at = b % node.children.length;
        node.children.splice(at, 0, clone(node.children[at]!));
      }
      break;
    case 'version': {
      const version = info?.children?.[0];
      if (version) version.contents = pick([Buffer.from([1]), Buffer.from([2]), Buffer.from([0, 0]), Buffer.alloc(0), Buffer.from([0xff])], b);
      break;
    }
    case 'unusedBits': {
      const bitStrings = nodes.filter((n) => n.node.tag === 0x03);
      if (bitStrings.length > 0) {
        const target = pick(bitStrings, b).node;
        if (target.contents.length > 0) target.contents[0] = 1 + (a % 7);
      }
      break;
    }
    case 'ecPoint': {
      const bits = spki?.children?.[1];
      if (seed.kind !== 'ec' || !bits || bits.contents.length < 3) break;
      const point = bits.contents.subarray(1);
      const size = (point.length - 1) / 2;
      const x = point.subarray(1, 1 + size);
      const y = point.subarray(1 + size);
      const odd = y[y.length - 1]! & 1;
      const variants = [
        Buffer.concat([Buffer.from([0x02 + odd]), x]),
        Buffer.concat([Buffer.from([0x03 - odd]), x]),
        Buffer.concat([Buffer.from([0x06 + odd]), x, y]),
        Buffer.concat([Buffer.from([0x04]), x, Buffer.from(y).fill(0x11, y.length - 1)]),
        Buffer.concat([Buffer.from([0x04]), x, y, Buffer.from([0])]),
        Buffer.concat([Buffer.from([0x04]), x]),
        Buffer.from([0x00]),
      ];
      bits.contents = Buffer.concat([Buffer.from([0]), pick(variants, b)]);
      break;
    }
    case 'rsaExponent': {
      const rsaKey = spki?.children?.[1]?.children?.[0];
      const exponent = rsaKey?.children?.[1];
      if (seed.kind !== 'rsa' || !exponent) break;
      exponent.contents = pick(
        [BIG_EXPONENT, Buffer.from([0x01, 0x00, 0x00]), Buffer.from([0x01]), Buffer.from([0x01, 0x00, 0x00, 0x00, 0x01]), Buffer.from([0x03]), Buffer.from([0x00, 0xff, 0xff, 0xff, 0xff])],
        b,
      );
      break;
    }
    case 'signatureParameters': {
      const algorithm = root.children?.[1];
      if (!algorithm?.children) break;
      const variant = b % 4;
      if (variant === 0) algorithm.children.splice(1);
      else if (variant === 1) algorithm.children.splice(1, algorithm.children.length, { tag: 0x05, form: 'minimal', contents: Buffer.alloc(0) });
      else if (variant === 2) algorithm.children.push({ tag: 0x04, form: 'minimal', contents: Buffer.from([a & 0xff]) });
      else if (seed.kind === 'rsa') {
        // RSASSA-PSS with SHA-256 parameters, and (if re-signed) a real PSS signature.
        const params = parseTree(Buffer.from('3034a00f300d06096086480165030402010500a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120', 'hex')).node;
        algorithm.children.splice(0, algorithm.children.length, oidNode(OID_RSASSA_PSS), params);
        state.pss = true;
      }
      break;
    }
    case 'contentByte': {
      const primitives = nodes.filter((n) => !n.node.children && n.node.contents.length > 0);
      const target = pick(primitives, b).node;
      target.contents[a % target.contents.length] = target.contents[a % target.contents.length]! ^ (1 << (b % 8));
      break;
    }
    case 'subjectName': {
      const subject = info?.children?.[1];
      if (!subject?.children) break;
      const value: Node = { tag: pick([0x0c, 0x13, 0x16, 0x1e, 0x04], b), form: 'minimal', contents: Buffer.from(`w${a % 1000}`, 'latin1') };
      subject.children.push({ tag: 0x31, form: 'minimal', contents: Buffer.alloc(0), children: [{ tag: 0x30, form: 'minimal', contents: Buffer.alloc(0), children: [oidNode(OID_CN), value] }] });
      break;
    }
    case 'attribute': {
      const attributes = info?.children?.[3];
      if (!attributes?.children) break;
      const value: Node = pick<Node>(
        [
          { tag: 0x0c, form: 'minimal', contents: Buffer.from('secret') },
          { tag: 0x13, form: 'indefinite', contents: Buffer.from('secret') },
          { tag: 0x01, form: 'minimal', contents: Buffer.from([0x01]) },
          { tag: 0x30, form: 'minimal', contents: Buffer.alloc(0), children: [{ tag: 0x02, form: 'minimal', contents: Buffer.from([0x00, 0x05]) }] },
        ],
        b,
      );
      attributes.children.push({ tag: 0x30, form: 'minimal', contents: Buffer.alloc(0), children: [oidNode(OID_CHALLENGE_PASSWORD), { tag: 0x31, form: 'minimal', contents: Buffer.alloc(0), children: [value] }] });
      break;
    }
    case 'criticalFalse': {
      // An explicit critical FALSE (DER omits DEFAULT values) or a non-DER TRUE in a requested extension.
      const extensions = nodes.filter((n) => n.node.tag === 0x30 && n.node.children?.[0]?.tag === 0x06 && n.node.children?.[1]?.tag === 0x01);
      const target = extensions.length > 0 ? pick(extensions, b).node : undefined;
      if (target) target.children![1]!.contents = Buffer.from([b % 2 === 0 ? 0x00 : 0x01]);
      break;
    }
  }
  void parent;
}

/** Builds one mutant from a plan; deterministic for a given plan. */
export function buildMutant(seeds: readonly Seed[], plan: MutationPlan): { der: Buffer; seed: Seed; ops: string[] } {
  const seed = pick(seeds, plan.seed);
  const state: MutationState = { root: parseTree(seed.der).node, pss: false };
  const ops: string[] = [];
  for (const [op, a, b] of plan.ops) {
    ops.push(OP_NAMES[op]!);
    applyOp(state, seed, OP_NAMES[op]!, a, b);
  }
  const info = state.root.children?.[0];
  const signature = state.root.children?.[2];
  if (plan.resign && info && signature && signature.tag === 0x03 && !signature.children) {
    const tbs = writeTree(info);
    const value = state.pss
      ? sign('sha256', tbs, { key: seed.privateKey, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 })
      : sign(seed.hash, tbs, seed.privateKey);
    signature.contents = Buffer.concat([Buffer.from([0]), value]);
    ops.push('resign');
  }
  let der = writeTree(state.root);
  for (const [kind, at, value] of plan.bytes) {
    if (der.length === 0) break;
    if (kind === 0) {
      der = Buffer.from(der);
      der[at % der.length] = der[at % der.length]! ^ (1 << (value % 8));
      ops.push('bitFlip');
    } else if (kind === 1) {
      der = der.subarray(0, at % der.length);
      ops.push('truncate');
    } else {
      der = Buffer.concat([der, Buffer.from([value])]);
      ops.push('append');
    }
  }
  return { der, seed, ops };
}

// ---------------------------------------------------------------------------------------------------------------
// The independent checker

const SIGNATURE_ALGORITHMS: Record<string, { hash: string; parameters: 'NULL' | 'absent'; kind: 'rsa' | 'ec' }> = {
  '1.2.840.113549.1.1.11': { hash: 'sha256', parameters: 'NULL', kind: 'rsa' },
  '1.2.840.113549.1.1.12': { hash: 'sha384', parameters: 'NULL', kind: 'rsa' },
  '1.2.840.113549.1.1.13': { hash: 'sha512', parameters: 'NULL', kind: 'rsa' },
  '1.2.840.10045.4.3.2': { hash: 'sha256', parameters: 'absent', kind: 'ec' },
  '1.2.840.10045.4.3.3': { hash: 'sha384', parameters: 'absent', kind: 'ec' },
  '1.2.840.10045.4.3.4': { hash: 'sha512', parameters: 'absent', kind: 'ec' },
};

/** What a second parser and OpenSSL make of the bytes: the canonical SPKI, or why they are not a valid CSR. */
export function independentCheck(der: Buffer): { ok: true; spki: Buffer } | { ok: false; reason: string } {
  let request: CertificationRequest;
  try {
    request = AsnConvert.parse(der, CertificationRequest);
  } catch (error) {
    return { ok: false, reason: `@peculiar/asn1-csr cannot parse it: ${(error as Error).message}` };
  }
  if (!Buffer.from(AsnConvert.serialize(request)).equals(der)) return { ok: false, reason: 'not canonical DER: @peculiar re-serialises it differently' };
  const info = request.certificationRequestInfo;
  if (info.version !== 0) return { ok: false, reason: `version ${info.version}` };
  if (!request.certificationRequestInfoRaw) return { ok: false, reason: 'no CertificationRequestInfo bytes located' };
  const infoBytes = Buffer.from(request.certificationRequestInfoRaw);
  const spki = Buffer.from(AsnConvert.serialize(info.subjectPKInfo));
  let key: KeyObject;
  try {
    key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch (error) {
    return { ok: false, reason: `OpenSSL cannot read the key: ${(error as Error).message}` };
  }
  let exported: Buffer;
  try {
    exported = key.export({ format: 'der', type: 'spki' });
  } catch (error) {
    return { ok: false, reason: `OpenSSL cannot re-export the key: ${(error as Error).message}` };
  }
  if (!exported.equals(spki)) return { ok: false, reason: 'the SPKI is not the canonical encoding of its key' };
  const algorithm = SIGNATURE_ALGORITHMS[request.signatureAlgorithm.algorithm];
  if (!algorithm) return { ok: false, reason: `signature algorithm ${request.signatureAlgorithm.algorithm}` };
  if (algorithm.kind !== key.asymmetricKeyType) return { ok: false, reason: 'signature algorithm does not match the key' };
  const parameters = request.signatureAlgorithm.parameters;
  // @peculiar reads NULL parameters as null and absent ones as undefined (the byte-for-byte round trip pins which).
  if (algorithm.parameters === 'NULL' ? parameters !== null : parameters !== undefined) {
    return { ok: false, reason: 'signature algorithm parameters are not the standard ones' };
  }
  let valid = false;
  try {
    valid = verify(algorithm.hash, infoBytes, key, Buffer.from(request.signature));
  } catch {
    valid = false;
  }
  return valid ? { ok: true, spki } : { ok: false, reason: 'the signature does not verify over the CertificationRequestInfo bytes' };
}

function opensslReqVerify(der: Buffer): { ok: boolean; output: string } {
  const result = spawnSync('openssl', ['req', '-verify', '-noout', '-inform', 'DER'], { input: der, encoding: 'buffer' });
  const output = `${result.stdout.toString()}${result.stderr.toString()}`;
  return { ok: result.status === 0 && /verify OK/i.test(output), output };
}

// ---------------------------------------------------------------------------------------------------------------
// The run

export interface DifferentialStats {
  inputs: number;
  accepted: number;
  refused: number;
  /** Refusals by PkiError code. */
  refusedByCode: Record<string, number>;
  /** Refusals also run through the independent checker (a sample: @peculiar's parser costs ~3 ms a CSR). */
  refusalsCrossChecked: number;
  /** Of those, how many the independent checker accepts: meshca's extra strictness (allowed). */
  refusedButIndependentlyValid: number;
  /** A few examples of such extra strictness, for the record. */
  stricterExamples: string[];
  opensslChecked: number;
  leavesChecked: number;
  wrongCertificates: number;
}

export interface Differential {
  seeds: Seed[];
  check(plan: MutationPlan): Promise<void>;
  stats: DifferentialStats;
  cleanup(): void;
}

const IDENTITY = 'spiffe://cluster.local/ns/default/sa/fuzz';
const WORKLOAD = WorkloadId.parse(IDENTITY);

export function createDifferential(options: { opensslSamples: number; refusalSamples: number }): Differential {
  const temp = makeTempDir('meshca-csr-diff-');
  const rootKey = generateKeyPairFor('ec-p256').privateKey;
  const root = parseCertificate(createCaCertificate({ subject: { organization: 'cluster.local' }, subjectKey: rootKey, notAfter: new Date(Date.now() + 86400_000) }));
  const signer = new LocalSigner('self-signed', buildCaMaterial({ signingCert: root, privateKey: rootKey, chain: [], roots: [root] }));
  const authority = new CertificateAuthority({ signer, defaultTtlSeconds: 3600, maxTtlSeconds: 86400 });

  const keys = [
    { name: 'RSA-2048', privateKey: generateKeyPairFor('rsa-2048').privateKey, hash: 'sha256' as const, kind: 'rsa' as const, curve: '' },
    { name: 'P-256', privateKey: generateKeyPairFor('ec-p256').privateKey, hash: 'sha256' as const, kind: 'ec' as const, curve: 'P-256' },
    { name: 'P-384', privateKey: generateKeyPairFor('ec-p384').privateKey, hash: 'sha384' as const, kind: 'ec' as const, curve: 'P-384' },
  ];
  const seeds: Seed[] = [];
  for (const key of keys) {
    seeds.push({ ...key, name: `meshca ${key.name}`, der: Buffer.from(createCsr({ privateKey: key.privateKey, uris: [IDENTITY] }).replace(/-----[^-]+-----|\s/g, ''), 'base64') });
    const keyFile = path.join(temp.dir, `${key.name}.pem`);
    writeFileSync(keyFile, key.privateKey.export({ format: 'pem', type: 'pkcs8' }));
    const made = spawnSync('openssl', ['req', '-new', '-key', keyFile, '-subj', '/O=example/CN=workload', `-${key.hash}`, '-addext', `subjectAltName=URI:${IDENTITY}`, '-outform', 'DER'], { encoding: 'buffer' });
    assert.equal(made.status, 0, `openssl req -new failed: ${made.stderr.toString()}`);
    seeds.push({ ...key, name: `openssl ${key.name}`, der: made.stdout });
  }

  const stats: DifferentialStats = {
    inputs: 0,
    accepted: 0,
    refused: 0,
    refusedByCode: {},
    refusalsCrossChecked: 0,
    refusedButIndependentlyValid: 0,
    stricterExamples: [],
    opensslChecked: 0,
    leavesChecked: 0,
    wrongCertificates: 0,
  };

  async function check(plan: MutationPlan): Promise<void> {
    const { der, seed, ops } = buildMutant(seeds, plan);
    const what = `mutant of ${seed.name} by [${ops.join(', ')}]: ${der.toString('hex')}`;
    stats.inputs++;
    let chain: string[] | undefined;
    try {
      chain = (await authority.issue({ csrPem: encodePem('CERTIFICATE REQUEST', der), identity: WORKLOAD, requestedTtlSeconds: 0 })).chain;
    } catch (error) {
      assert.ok(error instanceof CaError && error.code === 'CSR_ERROR' && isPkiError(error.cause), `refusal is not a CSR_ERROR from a PkiError (${(error as Error).message}) for ${what}`);
      stats.refused++;
      const code = (error.cause as { code: string }).code;
      stats.refusedByCode[code] = (stats.refusedByCode[code] ?? 0) + 1;
      if (stats.refusalsCrossChecked < options.refusalSamples) {
        stats.refusalsCrossChecked++;
        if (independentCheck(der).ok) {
          stats.refusedButIndependentlyValid++;
          if (stats.stricterExamples.length < 5) stats.stricterExamples.push(`[${ops.join(', ')}] -> ${code}: ${(error.cause as Error).message}`);
        }
      }
      return;
    }
    stats.accepted++;
    const independent = independentCheck(der);
    assert.ok(independent.ok, `meshca issued for a CSR the independent checker refuses (${independent.ok ? '' : independent.reason}): ${what}`);
    if (stats.opensslChecked < options.opensslSamples) {
      const openssl = opensslReqVerify(der);
      assert.ok(openssl.ok, `meshca issued for a CSR that openssl req -verify refuses (${openssl.output.trim()}): ${what}`);
      stats.opensslChecked++;
    }
    const leaf = AsnConvert.parse(Buffer.from(chain[0]!.replace(/-----[^-]+-----|\s/g, ''), 'base64'), Certificate);
    const leafSpki = Buffer.from(AsnConvert.serialize(leaf.tbsCertificate.subjectPublicKeyInfo));
    stats.leavesChecked++;
    if (!leafSpki.equals(independent.spki) || !leafSpki.equals(createPublicKey(seed.privateKey).export({ format: 'der', type: 'spki' }))) {
      stats.wrongCertificates++;
      assert.fail(`the leaf does not certify exactly the CSR's key: ${what}`);
    }
  }

  return { seeds, check, stats, cleanup: temp.cleanup };
}

/** Runs `runs` mutants through `check` with fast-check (fixed seed unless MESHCA_FUZZ_SEED is set). */
export async function runDifferential(differential: Differential, runs: number, seed: number): Promise<DifferentialStats> {
  const envSeed = process.env.MESHCA_FUZZ_SEED ? Number(process.env.MESHCA_FUZZ_SEED) : undefined;
  await fc.assert(
    fc.asyncProperty(mutationPlanArbitrary, (plan) => differential.check(plan)),
    { numRuns: runs, seed: envSeed ?? seed, endOnFailure: true, includeErrorInReport: true },
  );
  return differential.stats;
}

export function formatStats(stats: DifferentialStats): string {
  const codes = Object.entries(stats.refusedByCode)
    .sort((a, b) => b[1] - a[1])
    .map(([code, count]) => `${code} ${count}`)
    .join(', ');
  return (
    `${stats.inputs} inputs: ${stats.accepted} accepted, ${stats.refused} refused (${codes}); ` +
    `${stats.refusedButIndependentlyValid} of ${stats.refusalsCrossChecked} refusals cross-checked are accepted by the independent checker (meshca stricter); ` +
    `openssl req -verify on ${stats.opensslChecked} accepted; ${stats.leavesChecked} leaves checked, ${stats.wrongCertificates} wrong certificates`
  );
}
