/**
 * PodCertificateRequests for the Kubernetes stand-in (test code only): `certificates.k8s.io` v1beta1 (and v1 when
 * `served` includes it), following the wire contract a real API server keeps:
 *  - discovery entries (`podCertificateRequestResources`, served by kube-ctb.ts's discovery) where served;
 *  - create (generateName, status wiped, the spec rules: required fields, signer name, maxExpirationSeconds range,
 *    one key encoding, key types RSA 3072/4096, ECDSA P-256/384/521 and Ed25519, the proof of possession over the
 *    pod UID or the stub CSR's self-signature), get, list and watch (cluster-wide or per namespace, field selectors
 *    metadata.name, metadata.namespace, spec.signerName, spec.podName, spec.nodeName; watch resumes from a
 *    resourceVersion, 410 Expired after `compact()`), update (spec frozen, status ignored), delete;
 *  - PUT `/status` with every rule of a status write (resourceVersion required, terminal status immutable, Denied
 *    and Failed carry no certificate, Issued: chain parses, leaf key is the request's, notBefore/notAfter equal the
 *    leaf's, notBefore within 5 minutes of now, lifetime 1 h..maxExpirationSeconds, beginRefreshAt 10 minutes inside),
 *    each refusal a 422 Invalid Status recorded in `rejections`.
 * Not implemented: PATCH, the `sign` permission check (except `state.forbidden` "sign signers" ⇒ 422), NodeRestriction,
 * the 15-minute garbage collection, v1alpha1.
 */
import { createPublicKey, randomUUID, verify, X509Certificate, type KeyObject } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isRecord, readBody, sendJson } from './http-util.js';
import { StatusError, type KubeStandinState } from './kube.js';

type Version = 'v1beta1' | 'v1';
type Pcr = { metadata: Record<string, unknown> & { name: string; namespace: string; uid: string; resourceVersion: string }; spec: Record<string, unknown>; status: Record<string, unknown> };

interface Watcher {
  version: Version;
  matches: (o: Pcr) => boolean;
  res: ServerResponse;
  close(): void;
}

export interface PcrRejection {
  /** Which write was refused. */
  write: 'create' | 'update' | 'status';
  name: string;
  code: number;
  message: string;
}

const GROUP = 'certificates.k8s.io';
const FIELDS = ['metadata.name', 'metadata.namespace', 'spec.signerName', 'spec.podName', 'spec.nodeName'];
const REASON_RE = /^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/;
const LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

function invalid(name: string, causes: { field: string; message: string }[]): StatusError {
  const text = causes.map((c) => `${c.field}: ${c.message}`);
  return new StatusError(422, 'Invalid', `PodCertificateRequest.certificates.k8s.io "${name}" is invalid: ${text.length === 1 ? text[0] : `[${text.join(', ')}]`}`, {
    name,
    group: GROUP,
    kind: 'PodCertificateRequest',
    causes: causes.map((c) => ({ reason: 'FieldValueInvalid', message: c.message, field: c.field })),
  });
}

function signerNameError(name: string): string | undefined {
  const parts = name.split('/');
  if (parts.length !== 2) return 'must be a fully qualified domain and path of the form "example.com/signer-name"';
  const labels = parts[0]!.split('.');
  if (labels.length < 2 || !labels.every((l) => LABEL.test(l))) return 'the domain must be a valid DNS subdomain with at least two labels';
  if (!parts[1]!.split('.').every((s) => LABEL.test(s))) return 'the path must be a valid DNS subdomain';
  return undefined;
}

/** Minimal DER walk: the children of the element at `at` (tag, start of contents, end). */
function derChildren(buf: Buffer, start: number, end: number): { tag: number; at: number; start: number; end: number }[] {
  const out: { tag: number; at: number; start: number; end: number }[] = [];
  let at = start;
  while (at < end) {
    const tag = buf[at]!;
    let length = buf[at + 1]!;
    let header = 2;
    if (length & 0x80) {
      const n = length & 0x7f;
      length = buf.readUIntBE(at + 2, n);
      header += n;
    }
    out.push({ tag, at, start: at + header, end: at + header + length });
    at += header + length;
  }
  if (at !== end) throw new Error('truncated DER');
  return out;
}

const SIGNATURE_HASHES: Record<string, string | null> = {
  '2a8648ce3d040302': 'sha256',
  '2a8648ce3d040303': 'sha384',
  '2a8648ce3d040304': 'sha512',
  '2a864886f70d01010b': 'sha256',
  '2a864886f70d01010c': 'sha384',
  '2a864886f70d01010d': 'sha512',
  '2b6570': null,
};

/** The stub CSR's public key, after checking its self-signature; throws with the API's kind of message. */
function stubKey(der: Buffer): { key: KeyObject; spki: Buffer } {
  const [top] = derChildren(der, 0, der.length);
  const [info, algorithm, signature] = derChildren(der, top!.start, top!.end);
  const [, , spki] = derChildren(der, info!.start, info!.end);
  const spkiDer = der.subarray(spki!.at, spki!.end);
  const key = createPublicKey({ key: spkiDer, format: 'der', type: 'spki' });
  const [oid] = derChildren(der, algorithm!.start, algorithm!.end);
  const hash = SIGNATURE_HASHES[der.subarray(oid!.start, oid!.end).toString('hex')];
  if (hash === undefined) throw new Error('unsupported signature algorithm');
  const ok = verify(hash, der.subarray(info!.at, info!.end), key, der.subarray(signature!.start + 1, signature!.end));
  if (!ok) throw new Error('signature does not verify');
  return { key, spki: spkiDer };
}

function keyTypeError(key: KeyObject): string | undefined {
  const d = key.asymmetricKeyDetails ?? {};
  if (key.asymmetricKeyType === 'rsa') return d.modulusLength === 3072 || d.modulusLength === 4096 ? undefined : 'RSA keys must have modulus size 3072 or 4096';
  if (key.asymmetricKeyType === 'ec') return ['prime256v1', 'secp384r1', 'secp521r1'].includes(d.namedCurve ?? '') ? undefined : 'ECDSA keys must use curve P256 or P384';
  if (key.asymmetricKeyType === 'ed25519') return undefined;
  return 'unknown public key type; supported types are Ed25519, ECDSA, and RSA';
}

function popVerifies(key: KeyObject, podUid: string, proof: Buffer): boolean {
  const msg = Buffer.from(podUid, 'ascii');
  try {
    if (key.asymmetricKeyType === 'ed25519') return verify(null, msg, key, proof);
    if (key.asymmetricKeyType === 'ec') return verify('sha256', msg, { key, dsaEncoding: 'der' }, proof);
    return verify('sha256', msg, { key, padding: 6 /* RSA_PKCS1_PSS_PADDING */, saltLength: -2 /* auto */ }, proof);
  } catch {
    return false;
  }
}

const rfc3339 = (ms: number): string => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');

export class PodCertificateRequestStore {
  /**
   * Versions served: none by default, as on 1.35/1.36 where the PodCertificateRequest gate is off; a test turns on
   * 'v1beta1' (the gate and runtime-config on) or 'v1' (1.37+).
   */
  served = new Set<Version>();
  /** The API server's clock (epoch ms) for the 5-minute notBefore rule; tests may drive it. */
  now: () => number = Date.now;
  /** Every write the validation refused (422), in order. */
  readonly rejections: PcrRejection[] = [];
  /** Successful /status writes. */
  statusWrites = 0;
  /** Fault knob: this many next /status writes get 409 Conflict (as when another writer got there first). */
  conflictNextStatusWrites = 0;
  private readonly objects = new Map<string, Pcr>();
  private readonly history: { rv: number; type: string; object: Pcr; old?: Pcr }[] = [];
  private readonly watchers = new Set<Watcher>();
  private rv = 1000;
  private compactedRv = 0;

  constructor(private readonly state: KubeStandinState) {}

  get(namespace: string, name: string, version: Version = 'v1beta1'): Record<string, unknown> | undefined {
    const o = this.objects.get(`${namespace}/${name}`);
    return o && this.render(o, version);
  }

  list(): Record<string, unknown>[] {
    return [...this.objects.values()].map((o) => this.render(o, 'v1beta1'));
  }

  closeWatches(): void {
    for (const w of [...this.watchers]) w.close();
  }

  compact(): void {
    this.compactedRv = this.rv;
    this.history.length = 0;
  }

  private render(o: Pcr, version: Version, withKind = true): Record<string, unknown> {
    const copy = structuredClone(o) as Record<string, unknown> & Pcr;
    if (version === 'v1') {
      delete copy.spec.pkixPublicKey;
      delete copy.spec.proofOfPossession;
    }
    return withKind ? { apiVersion: `${GROUP}/${version}`, kind: 'PodCertificateRequest', ...copy } : copy;
  }

  private emit(type: string, object: Pcr, old?: Pcr): void {
    const ev = { rv: this.rv, type, object: structuredClone(object), ...(old ? { old: structuredClone(old) } : {}) };
    this.history.push(ev);
    for (const w of this.watchers) this.deliver(w, ev);
  }

  private deliver(w: Watcher, ev: { type: string; object: Pcr; old?: Pcr }): void {
    const now = w.matches(ev.object);
    const before = ev.old ? w.matches(ev.old) : false;
    const type = ev.type === 'MODIFIED' ? (before && now ? 'MODIFIED' : now ? 'ADDED' : before ? 'DELETED' : undefined) : now ? ev.type : undefined;
    if (type) w.res.write(`${JSON.stringify({ type, object: this.render(ev.object, w.version) })}\n`);
  }

  private reject(write: PcrRejection['write'], name: string, error: StatusError): StatusError {
    this.rejections.push({ write, name, code: error.code, message: error.message });
    return error;
  }

  create(version: Version, namespace: string, body: unknown): Record<string, unknown> {
    const obj = isRecord(body) ? body : {};
    const metadata = isRecord(obj.metadata) ? { ...obj.metadata } : {};
    const spec = isRecord(obj.spec) ? { ...obj.spec } : {};
    const name = typeof metadata.name === 'string' && metadata.name ? metadata.name : typeof metadata.generateName === 'string' ? `${metadata.generateName}${randomUUID().slice(0, 5)}` : '';
    const causes: { field: string; message: string }[] = [];
    if (!name) causes.push({ field: 'metadata.name', message: 'Required value: name or generateName is required' });
    for (const field of ['signerName', 'podName', 'podUID', 'serviceAccountName', 'serviceAccountUID', 'nodeName', 'nodeUID']) {
      const v = spec[field];
      if (typeof v !== 'string' || v === '') causes.push({ field: `spec.${field}`, message: 'Required value' });
      else if (v.length > 128 && field.endsWith('UID')) causes.push({ field: `spec.${field}`, message: 'Too long: may not be more than 128 bytes' });
    }
    const signerError = typeof spec.signerName === 'string' && spec.signerName ? signerNameError(spec.signerName) : undefined;
    if (signerError) causes.push({ field: 'spec.signerName', message: `Invalid value: "${String(spec.signerName)}": ${signerError}` });
    spec.maxExpirationSeconds ??= 86400;
    const max = spec.maxExpirationSeconds;
    const upper = String(spec.signerName ?? '').split('/')[0]!.endsWith('kubernetes.io') ? 86400 : 7862400;
    if (typeof max !== 'number' || !Number.isInteger(max) || max < 3600 || max > upper) {
      causes.push({ field: 'spec.maxExpirationSeconds', message: `Invalid value: ${String(max)}: must be in the range [3600, ${upper}]` });
    }
    const stub = typeof spec.stubPKCS10Request === 'string' && spec.stubPKCS10Request !== '' ? spec.stubPKCS10Request : undefined;
    const pkix = typeof spec.pkixPublicKey === 'string' && spec.pkixPublicKey !== '' ? spec.pkixPublicKey : undefined;
    const pop = typeof spec.proofOfPossession === 'string' && spec.proofOfPossession !== '' ? spec.proofOfPossession : undefined;
    if (version === 'v1') {
      delete spec.pkixPublicKey;
      delete spec.proofOfPossession;
    }
    try {
      if (stub) {
        if (version === 'v1beta1' && (pkix || pop)) throw new Error('pkixPublicKey and proofOfPossession must be empty when stubPKCS10Request is set');
        const { key } = stubKey(Buffer.from(stub, 'base64'));
        const bad = keyTypeError(key);
        if (bad) causes.push({ field: 'spec.stubPKCS10Request', message: `Invalid value: "<value omitted>": ${bad}` });
      } else if (version === 'v1') {
        causes.push({ field: 'spec.stubPKCS10Request', message: 'Required value' });
      } else if (!pkix || !pop) {
        causes.push({ field: pkix ? 'spec.proofOfPossession' : 'spec.pkixPublicKey', message: 'Required value' });
      } else {
        const key = createPublicKey({ key: Buffer.from(pkix, 'base64'), format: 'der', type: 'spki' });
        const bad = keyTypeError(key);
        if (bad) causes.push({ field: 'spec.pkixPublicKey', message: `Invalid value: "<value omitted>": ${bad}` });
        else if (!popVerifies(key, String(spec.podUID), Buffer.from(pop, 'base64'))) {
          causes.push({ field: 'spec.proofOfPossession', message: 'Invalid value: "<proof of possession omitted>": could not verify proof-of-possession signature' });
        }
      }
    } catch (error) {
      causes.push({ field: stub ? 'spec.stubPKCS10Request' : 'spec.pkixPublicKey', message: `Invalid value: "<value omitted>": ${(error as Error).message}` });
    }
    if (causes.length > 0) throw this.reject('create', name, invalid(name, causes));
    if (this.objects.has(`${namespace}/${name}`)) throw new StatusError(409, 'AlreadyExists', `podcertificaterequests.certificates.k8s.io "${name}" already exists`, { name, group: GROUP, kind: 'podcertificaterequests' });
    this.rv++;
    const stored: Pcr = {
      metadata: { ...metadata, name, namespace, uid: randomUUID(), resourceVersion: String(this.rv), creationTimestamp: rfc3339(Date.now()) },
      spec,
      status: {},
    };
    delete stored.metadata.generateName;
    this.objects.set(`${namespace}/${name}`, stored);
    this.emit('ADDED', stored);
    return this.render(stored, version);
  }

  private existing(write: PcrRejection['write'], namespace: string, name: string, body: unknown): { cur: Pcr; obj: Record<string, unknown> } {
    const cur = this.objects.get(`${namespace}/${name}`);
    if (!cur) throw new StatusError(404, 'NotFound', `podcertificaterequests.certificates.k8s.io "${name}" not found`, { name, group: GROUP, kind: 'podcertificaterequests' });
    const obj = isRecord(body) ? body : {};
    const rv = isRecord(obj.metadata) ? obj.metadata.resourceVersion : undefined;
    if (rv === undefined || rv === '') throw this.reject(write, name, invalid(name, [{ field: 'metadata.resourceVersion', message: 'Invalid value: 0x0: must be specified for an update' }]));
    if (rv !== cur.metadata.resourceVersion) {
      throw new StatusError(409, 'Conflict', `Operation cannot be fulfilled on podcertificaterequests.certificates.k8s.io "${name}": the object has been modified; please apply your changes to the latest version and try again`, {
        name,
        group: GROUP,
        kind: 'podcertificaterequests',
      });
    }
    return { cur, obj };
  }

  private store(cur: Pcr, next: Pcr, version: Version): Record<string, unknown> {
    if (JSON.stringify(next) === JSON.stringify(cur)) return this.render(cur, version);
    this.rv++;
    next.metadata.resourceVersion = String(this.rv);
    this.objects.set(`${cur.metadata.namespace}/${cur.metadata.name}`, next);
    this.emit('MODIFIED', next, cur);
    return this.render(next, version);
  }

  /** PUT of the main resource: labels and annotations may change; the spec is frozen and the status is ignored. */
  update(version: Version, namespace: string, name: string, body: unknown): Record<string, unknown> {
    const { cur, obj } = this.existing('update', namespace, name, body);
    const spec = isRecord(obj.spec) ? obj.spec : {};
    const frozen = this.render(cur, version, false) as Pcr;
    if (JSON.stringify(spec) !== JSON.stringify(frozen.spec)) throw this.reject('update', name, invalid(name, [{ field: 'spec', message: 'Invalid value: "<spec>": field is immutable' }]));
    const meta = isRecord(obj.metadata) ? obj.metadata : {};
    const next = structuredClone(cur);
    for (const k of ['labels', 'annotations']) if (meta[k] !== undefined) next.metadata[k] = meta[k];
    return this.store(cur, next, version);
  }

  /** PUT of /status: only the status is taken, and only when it obeys every rule. */
  updateStatus(version: Version, namespace: string, name: string, body: unknown, user: string): Record<string, unknown> {
    const { cur, obj } = this.existing('status', namespace, name, body);
    if (this.conflictNextStatusWrites > 0) {
      this.conflictNextStatusWrites--;
      throw new StatusError(409, 'Conflict', `Operation cannot be fulfilled on podcertificaterequests.certificates.k8s.io "${name}": the object has been modified; please apply your changes to the latest version and try again`, {
        name,
        group: GROUP,
        kind: 'podcertificaterequests',
      });
    }
    const status = isRecord(obj.status) ? structuredClone(obj.status) : {};
    const causes = this.statusProblems(cur, status);
    if (causes.length === 0 && status.certificateChain !== cur.status.certificateChain && this.state.forbidden.has('sign signers')) {
      causes.push({ field: 'spec.signerName', message: `Forbidden: User "${user}" is not permitted to "sign" for signer "${String(cur.spec.signerName)}"` });
    }
    if (causes.length > 0) throw this.reject('status', name, invalid(name, causes));
    for (const c of Array.isArray(status.conditions) ? status.conditions : []) if (isRecord(c)) c.lastTransitionTime ??= rfc3339(this.now());
    const next = structuredClone(cur);
    next.status = status;
    this.statusWrites++;
    return this.store(cur, next, version);
  }

  private statusProblems(cur: Pcr, status: Record<string, unknown>): { field: string; message: string }[] {
    const terminalOf = (s: Record<string, unknown>): string | undefined =>
      (Array.isArray(s.conditions) ? s.conditions : []).find((c): c is Record<string, unknown> => isRecord(c) && ['Issued', 'Denied', 'Failed'].includes(String(c.type)))?.type as string | undefined;
    const strip = (s: Record<string, unknown>): string =>
      JSON.stringify({ ...s, conditions: (Array.isArray(s.conditions) ? s.conditions : []).map((c) => (isRecord(c) ? { ...c, lastTransitionTime: undefined } : c)) });
    if (terminalOf(cur.status)) {
      return strip(status) === strip(cur.status) ? [] : [{ field: 'status', message: 'Forbidden: updates are not allowed once the request is Issued, Denied, or Failed' }];
    }
    const conditions = Array.isArray(status.conditions) ? status.conditions : [];
    const causes: { field: string; message: string }[] = [];
    const types = new Set<string>();
    conditions.forEach((c, i) => {
      const f = `status.conditions[${i}]`;
      if (!isRecord(c)) return causes.push({ field: f, message: 'Invalid value: not an object' });
      const type = String(c.type ?? '');
      if (!['Issued', 'Denied', 'Failed'].includes(type)) causes.push({ field: `${f}.type`, message: `Unsupported value: "${type}": supported values: "Denied", "Failed", "Issued"` });
      if (types.has(type)) causes.push({ field: `${f}.type`, message: `Duplicate value: "${type}"` });
      types.add(type);
      if (c.status !== 'True') causes.push({ field: `${f}.status`, message: `Unsupported value: "${String(c.status)}": supported values: "True"` });
      if (typeof c.reason !== 'string' || !REASON_RE.test(c.reason) || c.reason.length > 1024) {
        causes.push({ field: `${f}.reason`, message: `Invalid value: "${String(c.reason)}": a condition reason must start with alphabetic character, optionally followed by a string of alphanumeric characters or '_,:', and must end with an alphanumeric character or '_'` });
      }
      if (typeof c.message === 'string' && c.message.length > 32768) causes.push({ field: `${f}.message`, message: 'Too long: may not be more than 32768 bytes' });
      return undefined;
    });
    if (types.size > 1) causes.push({ field: 'status.conditions', message: 'Invalid value: only one of Issued, Denied, or Failed may be set' });
    const terminal = terminalOf(status);
    if (!terminal) return [...causes, { field: 'status', message: 'Forbidden: a status update must move the request to Issued, Denied, or Failed' }];
    const times = ['certificateChain', 'notBefore', 'beginRefreshAt', 'notAfter'] as const;
    if (terminal !== 'Issued') {
      for (const t of times) if (status[t] !== undefined && status[t] !== '' && status[t] !== null) causes.push({ field: `status.${t}`, message: `Forbidden: must be empty when the request is ${terminal}` });
      return causes;
    }
    return [...causes, ...this.issuedProblems(cur, status)];
  }

  private issuedProblems(cur: Pcr, status: Record<string, unknown>): { field: string; message: string }[] {
    const chain = typeof status.certificateChain === 'string' ? status.certificateChain : '';
    if (chain.length > 100 * 1024) return [{ field: 'status.certificateChain', message: 'Too long: may not be more than 102400 bytes' }];
    const blocks = [...chain.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n]+?)-----END \1-----/g)];
    if (blocks.length === 0) return [{ field: 'status.certificateChain', message: 'Invalid value: "<value omitted>": must contain at least one CERTIFICATE PEM block' }];
    const certs: X509Certificate[] = [];
    for (const [i, block] of blocks.entries()) {
      if (block[1] !== 'CERTIFICATE') return [{ field: 'status.certificateChain', message: `Invalid value: "<value omitted>": block ${i} is ${block[1]}, not CERTIFICATE` }];
      try {
        certs.push(new X509Certificate(block[0]));
      } catch (error) {
        return [{ field: 'status.certificateChain', message: `Invalid value: "<value omitted>": block ${i} does not parse: ${(error as Error).message}` }];
      }
    }
    const leaf = certs[0]!;
    const causes: { field: string; message: string }[] = [];
    const stub = typeof cur.spec.stubPKCS10Request === 'string' && cur.spec.stubPKCS10Request ? stubKey(Buffer.from(cur.spec.stubPKCS10Request, 'base64')).spki : undefined;
    const requested = stub ?? Buffer.from(String(cur.spec.pkixPublicKey ?? ''), 'base64');
    if (!leaf.publicKey.export({ type: 'spki', format: 'der' }).equals(requested)) {
      causes.push({ field: 'status.certificateChain', message: 'Invalid value: "<value omitted>": leaf certificate does not contain the public key from the request' });
    }
    const parse = (field: string): number | undefined => {
      const v = status[field];
      if (typeof v !== 'string' || v === '') {
        causes.push({ field: `status.${field}`, message: 'Required value' });
        return undefined;
      }
      const ms = Date.parse(v);
      if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(v) || Number.isNaN(ms)) {
        causes.push({ field: `status.${field}`, message: `Invalid value: "${v}": not an RFC 3339 time` });
        return undefined;
      }
      return ms;
    };
    const notBefore = parse('notBefore');
    const notAfter = parse('notAfter');
    const refresh = parse('beginRefreshAt');
    const leafNotBefore = Date.parse(leaf.validFrom);
    const leafNotAfter = Date.parse(leaf.validTo);
    if (notBefore !== undefined) {
      if (notBefore !== leafNotBefore) causes.push({ field: 'status.notBefore', message: `Invalid value: "${String(status.notBefore)}": must be set to the NotBefore time encoded in the leaf certificate` });
      if (Math.abs(notBefore - this.now()) >= 5 * 60 * 1000) causes.push({ field: 'status.notBefore', message: `Invalid value: "${String(status.notBefore)}": must be within 5 minutes of the current time` });
    }
    if (notAfter !== undefined && notAfter !== leafNotAfter) {
      causes.push({ field: 'status.notAfter', message: `Invalid value: "${String(status.notAfter)}": must be set to the NotAfter time encoded in the leaf certificate` });
    }
    const lifetime = (leafNotAfter - leafNotBefore) / 1000;
    if (lifetime < 3600) causes.push({ field: 'status.certificateChain', message: `Invalid value: "<value omitted>": leaf certificate lifetime must be >= 1 hour (is ${lifetime}s)` });
    if (lifetime > Number(cur.spec.maxExpirationSeconds)) {
      causes.push({ field: 'status.certificateChain', message: `Invalid value: "<value omitted>": leaf certificate lifetime must be <= spec.maxExpirationSeconds (${String(cur.spec.maxExpirationSeconds)}s, is ${lifetime}s)` });
    }
    if (refresh !== undefined && notBefore !== undefined && notAfter !== undefined && (refresh < notBefore + 600_000 || refresh > notAfter - 600_000)) {
      causes.push({ field: 'status.beginRefreshAt', message: `Invalid value: "${String(status.beginRefreshAt)}": must be at least 10 minutes after notBefore and at least 10 minutes before notAfter` });
    }
    return causes;
  }

  delete(namespace: string, name: string): Record<string, unknown> {
    const cur = this.objects.get(`${namespace}/${name}`);
    if (!cur) throw new StatusError(404, 'NotFound', `podcertificaterequests.certificates.k8s.io "${name}" not found`, { name, group: GROUP, kind: 'podcertificaterequests' });
    this.objects.delete(`${namespace}/${name}`);
    this.rv++;
    const last = { ...structuredClone(cur), metadata: { ...cur.metadata, resourceVersion: String(this.rv) } };
    this.emit('DELETED', last);
    return this.render(last, 'v1beta1');
  }

  matcher(namespace: string | undefined, selector: string | null): (o: Pcr) => boolean {
    const terms = (selector ?? '').split(',').filter(Boolean).map((term) => {
      const m = /^([\w.]+)\s*(==|=|!=)\s*(.*)$/.exec(term);
      if (!m) throw new StatusError(400, 'BadRequest', `invalid selector: '${term}'; can't understand '${term}'`);
      if (!FIELDS.includes(m[1]!)) throw new StatusError(400, 'BadRequest', `"${m[1]!}" is not a known field selector: only "${FIELDS.join('", "')}"`);
      return { path: m[1]!.split('.'), equal: m[2] !== '!=', value: m[3]! };
    });
    return (o) =>
      (namespace === undefined || o.metadata.namespace === namespace) &&
      terms.every((t) => (String((o as unknown as Record<string, Record<string, unknown>>)[t.path[0]!]?.[t.path[1]!] ?? '') === t.value) === t.equal);
  }

  listResponse(version: Version, matches: (o: Pcr) => boolean): Record<string, unknown> {
    const items = [...this.objects.values()].filter(matches).map((o) => this.render(o, version, false));
    return { kind: 'PodCertificateRequestList', apiVersion: `${GROUP}/${version}`, metadata: { resourceVersion: String(this.rv) }, items };
  }

  watch(version: Version, matches: (o: Pcr) => boolean, q: URLSearchParams, req: IncomingMessage, res: ServerResponse): void {
    const from = q.get('resourceVersion') ?? '';
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    let timer: NodeJS.Timeout | undefined;
    const w: Watcher = {
      version,
      matches,
      res,
      close: () => {
        if (!this.watchers.delete(w)) return;
        clearTimeout(timer);
        res.end();
      },
    };
    if (from === '' || from === '0') {
      for (const o of this.objects.values()) if (matches(o)) res.write(`${JSON.stringify({ type: 'ADDED', object: this.render(o, version) })}\n`);
    } else if (Number(from) < this.compactedRv) {
      res.end(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${from} (${this.compactedRv})`, reason: 'Expired', code: 410 } })}\n`);
      return;
    } else for (const ev of this.history) if (ev.rv > Number(from)) this.deliver(w, ev);
    this.watchers.add(w);
    const timeout = Number(q.get('timeoutSeconds') ?? '0');
    if (timeout > 0) timer = setTimeout(() => w.close(), timeout * 1000);
    req.on('close', () => w.close());
  }
}

const stores = new WeakMap<KubeStandinState, PodCertificateRequestStore>();

/** The discovery entries of PodCertificateRequests at `version`: none where they are not served. */
export function podCertificateRequestResources(state: KubeStandinState, version: string): Record<string, unknown>[] {
  if (!podCertificateRequests(state).served.has(version as Version)) return [];
  return [
    { name: 'podcertificaterequests', singularName: 'podcertificaterequest', namespaced: true, kind: 'PodCertificateRequest', verbs: ['create', 'delete', 'get', 'list', 'update', 'watch'] },
    { name: 'podcertificaterequests/status', singularName: '', namespaced: true, kind: 'PodCertificateRequest', verbs: ['get', 'update'] },
  ];
}

/** The stand-in's PodCertificateRequests (created on first use). */
export function podCertificateRequests(state: KubeStandinState): PodCertificateRequestStore {
  let store = stores.get(state);
  if (!store) stores.set(state, (store = new PodCertificateRequestStore(state)));
  return store;
}

async function jsonBody(req: IncomingMessage): Promise<unknown> {
  const buf = await readBody(req);
  try {
    return buf.length === 0 ? undefined : (JSON.parse(buf.toString('utf8')) as unknown);
  } catch (e) {
    throw new StatusError(400, 'BadRequest', `the object provided is unrecognized: ${(e as Error).message}`);
  }
}

/** Serves /apis/certificates.k8s.io/... PodCertificateRequest paths; false when the path is not one of them. */
export async function routePodCertificateRequests(state: KubeStandinState, req: IncomingMessage, res: ServerResponse, url: URL, user: string): Promise<boolean> {
  const segs = url.pathname.split('/').filter(Boolean);
  if (segs[0] !== 'apis' || segs[1] !== GROUP) return false;
  const store = podCertificateRequests(state);
  const method = (req.method ?? 'GET').toUpperCase();
  // Discovery (/apis/certificates.k8s.io[/<v>]) is kube-ctb.ts's, with podCertificateRequestResources added.
  if (segs.length <= 3) return false;
  const version = segs[2] as Version;
  if (!store.served.has(version)) throw new StatusError(404, 'NotFound', 'the server could not find the requested resource', {});
  let rest = segs.slice(3);
  let namespace: string | undefined;
  if (rest[0] === 'namespaces' && rest.length >= 3) {
    namespace = rest[1];
    rest = rest.slice(2);
  }
  if (rest[0] !== 'podcertificaterequests' || rest.length > 3 || (rest.length === 3 && rest[2] !== 'status')) {
    throw new StatusError(404, 'NotFound', 'the server could not find the requested resource', {});
  }
  const name = rest[1];
  const q = url.searchParams;
  const verbFor = (verb: string): void => {
    if (state.forbidden.has(`${verb} podcertificaterequests${rest.length === 3 ? '/status' : ''}`)) {
      throw new StatusError(403, 'Forbidden', `podcertificaterequests.certificates.k8s.io is forbidden: User "${user}" cannot ${verb} resource "podcertificaterequests" in API group "${GROUP}"`, {
        group: GROUP,
        kind: 'podcertificaterequests',
      });
    }
  };
  if (name === undefined) {
    if (method === 'GET') {
      const matches = store.matcher(namespace, q.get('fieldSelector'));
      if (q.get('watch') === 'true' || q.get('watch') === '1') {
        verbFor('watch');
        store.watch(version, matches, q, req, res);
      } else {
        verbFor('list');
        sendJson(res, 200, store.listResponse(version, matches));
      }
      return true;
    }
    if (method === 'POST' && namespace) {
      verbFor('create');
      if (!state.get('namespaces', undefined, namespace)) throw new StatusError(404, 'NotFound', `namespaces "${namespace}" not found`, { name: namespace, kind: 'namespaces' });
      sendJson(res, 201, store.create(version, namespace, await jsonBody(req)));
      return true;
    }
    throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
  }
  if (!namespace) throw new StatusError(404, 'NotFound', 'the server could not find the requested resource', {});
  switch (method) {
    case 'GET': {
      verbFor('get');
      const o = store.get(namespace, name, version);
      if (!o) throw new StatusError(404, 'NotFound', `podcertificaterequests.certificates.k8s.io "${name}" not found`, { name, group: GROUP, kind: 'podcertificaterequests' });
      sendJson(res, 200, o);
      return true;
    }
    case 'PUT':
      verbFor('update');
      sendJson(res, 200, rest.length === 3 ? store.updateStatus(version, namespace, name, await jsonBody(req), user) : store.update(version, namespace, name, await jsonBody(req)));
      return true;
    case 'DELETE':
      verbFor('delete');
      sendJson(res, 200, store.delete(namespace, name));
      return true;
    default:
      throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
  }
}
