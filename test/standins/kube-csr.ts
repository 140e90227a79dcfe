/**
 * certificates.k8s.io/v1 CertificateSigningRequests for the Kubernetes stand-in (test code only), following the
 * API server's rules for CSRs (validation, registry strategies, the CertificateSigning admission plugin):
 *  - create / get / list / watch (fieldSelector metadata.name, spec.signerName; resume from a resourceVersion,
 *    410 Expired after `compact()`) / replace / delete, and the `/approval` and `/status` subresources (PUT);
 *  - create: status wiped, spec.username/uid/groups set from the requester; spec.request must be the base64 of a
 *    PEM CERTIFICATE REQUEST that parses and whose signature verifies (checked with the openssl CLI), signerName
 *    valid and not kubernetes.io/legacy-unknown, usages non-empty, known and unique, expirationSeconds >= 600;
 *  - spec is immutable; status changes only through the subresources; `/approval` changes only Approved/Denied
 *    (the `approve` verb on the signer); `/status` keeps the Approved/Denied conditions and needs `sign` on the
 *    signer whenever certificate or conditions change (403 otherwise);
 *  - conditions: type Approved/Denied/Failed, status "True", no repeats, Approved and Denied exclusive, never
 *    removed, lastTransitionTime filled; certificate: PEM CERTIFICATE blocks only (no headers, each parses),
 *    immutable once set. A rule broken is a 422 Invalid Status with causes.
 * Signer permissions: `signerGrants` ("<user> <verb> <signerName or domain/*>") when set, else everyone may.
 */
import { execFileSync } from 'node:child_process';
import { randomUUID, X509Certificate } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isRecord, readBody, sendJson } from './http-util.js';
import { StatusError, type KubeObject } from './kube.js';

const KIND = 'CertificateSigningRequest';
const API_VERSION = 'certificates.k8s.io/v1';
const BASE = '/apis/certificates.k8s.io/v1/certificatesigningrequests';
const KNOWN_USAGES = new Set([
  'signing',
  'digital signature',
  'content commitment',
  'key encipherment',
  'key agreement',
  'data encipherment',
  'cert sign',
  'crl sign',
  'encipher only',
  'decipher only',
  'any',
  'server auth',
  'client auth',
  'code signing',
  'email protection',
  's/mime',
  'ipsec end system',
  'ipsec tunnel',
  'ipsec user',
  'timestamping',
  'ocsp signing',
  'microsoft sgc',
  'netscape sgc',
]);
const CONDITION_TYPES = new Set(['Approved', 'Denied', 'Failed']);
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

interface Cause {
  field: string;
  message: string;
  reason: string;
}
interface Condition {
  type?: unknown;
  status?: unknown;
  reason?: unknown;
  message?: unknown;
  lastUpdateTime?: unknown;
  lastTransitionTime?: unknown;
}
interface CsrWatcher {
  matches: (o: KubeObject) => boolean;
  res: ServerResponse;
  close(): void;
}

const isoSeconds = (d = new Date()): string => d.toISOString().replace(/\.\d{3}Z$/, 'Z');
const clone = <T>(v: T): T => structuredClone(v);
const notFound = (name: string): StatusError =>
  new StatusError(404, 'NotFound', `certificatesigningrequests.certificates.k8s.io "${name}" not found`, { name, group: 'certificates.k8s.io', kind: 'certificatesigningrequests' });

function invalid(name: string, causes: Cause[]): StatusError {
  const text = causes.map((c) => `${c.field}: ${c.message}`);
  return new StatusError(422, 'Invalid', `${KIND}.certificates.k8s.io "${name}" is invalid: ${text.length === 1 ? text[0] : `[${text.join(', ')}]`}`, {
    name,
    group: 'certificates.k8s.io',
    kind: KIND,
    causes: causes.map((c) => ({ reason: c.reason, message: c.message, field: c.field })),
  });
}

function signerNameOk(name: string): boolean {
  const parts = name.split('/');
  if (parts.length !== 2 || name.length > 571) return false;
  const subdomain = (s: string, max: number): boolean => s.length > 0 && s.length <= max && s.split('.').every((l) => l.length <= 63 && DNS_LABEL.test(l));
  return subdomain(parts[0]!, 253) && parts[0]!.includes('.') && subdomain(parts[1]!, 317);
}

/** PEM blocks of `text`: type, whether it had headers, and the DER. */
function pemBlocks(text: string): { type: string; headers: boolean; der: Buffer }[] {
  const blocks: { type: string; headers: boolean; der: Buffer }[] = [];
  for (const m of text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g)) {
    const body = m[2]!;
    blocks.push({ type: m[1]!, headers: /^[^\s:]+:/m.test(body), der: Buffer.from(body.replace(/\s+/g, ''), 'base64') });
  }
  return blocks;
}

function decodeBase64(value: unknown): Buffer | undefined {
  if (typeof value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(value) || value.length % 4 !== 0) return undefined;
  return Buffer.from(value, 'base64');
}

function requestProblem(request: unknown): string | undefined {
  const bytes = decodeBase64(request);
  if (!bytes || bytes.length === 0) return 'Required value';
  const blocks = pemBlocks(bytes.toString('utf8')).filter((b) => b.type === 'CERTIFICATE REQUEST');
  if (blocks.length === 0) return 'Invalid value: "<binary>": PEM block type must be CERTIFICATE REQUEST';
  try {
    execFileSync('openssl', ['req', '-inform', 'DER', '-noout', '-verify'], { input: blocks[0]!.der, stdio: ['pipe', 'ignore', 'pipe'] });
  } catch {
    return 'Invalid value: "<binary>": x509: invalid signature or malformed certificate request';
  }
  return undefined;
}

function certificateProblem(certificate: unknown): string | undefined {
  const bytes = decodeBase64(certificate);
  if (!bytes) return 'Invalid value: "<certificate data>": illegal base64 data';
  const blocks = pemBlocks(bytes.toString('utf8'));
  if (blocks.length === 0) return 'Invalid value: "<certificate data>": must contain at least one CERTIFICATE PEM block';
  for (const [i, block] of blocks.entries()) {
    if (block.type !== 'CERTIFICATE') return `Invalid value: "<certificate data>": only CERTIFICATE PEM blocks are allowed, found "${block.type}"`;
    if (block.headers) return 'Invalid value: "<certificate data>": no PEM block headers are permitted';
    try {
      new X509Certificate(block.der);
    } catch (error) {
      return `Invalid value: "<certificate data>": failed to parse certificate ${i}: ${(error as Error).message}`;
    }
  }
  return undefined;
}

function conditionsOf(obj: KubeObject): Condition[] {
  const status = isRecord(obj.status) ? obj.status : {};
  return Array.isArray(status.conditions) ? (status.conditions as Condition[]) : [];
}

function conditionCauses(conditions: Condition[], old: Condition[]): Cause[] {
  const causes: Cause[] = [];
  const seen = new Set<string>();
  conditions.forEach((c, i) => {
    const field = `status.conditions[${i}]`;
    if (typeof c.type !== 'string' || c.type === '') causes.push({ field: `${field}.type`, message: 'Required value', reason: 'FieldValueRequired' });
    else if (!CONDITION_TYPES.has(c.type)) causes.push({ field: `${field}.type`, message: `Unsupported value: "${c.type}": supported values: "Approved", "Denied", "Failed"`, reason: 'FieldValueNotSupported' });
    else if (seen.has(c.type)) causes.push({ field: `${field}.type`, message: `Duplicate value: "${c.type}"`, reason: 'FieldValueDuplicate' });
    if (typeof c.type === 'string') seen.add(c.type);
    if (c.status !== 'True') causes.push({ field: `${field}.status`, message: `Unsupported value: "${String(c.status ?? '')}": supported values: "True"`, reason: 'FieldValueNotSupported' });
  });
  if (seen.has('Approved') && seen.has('Denied')) {
    causes.push({ field: 'status.conditions', message: 'Invalid value: "Approved": Approved and Denied conditions are mutually exclusive', reason: 'FieldValueInvalid' });
  }
  for (const type of ['Approved', 'Denied', 'Failed']) {
    if (old.some((c) => c.type === type) && !seen.has(type)) {
      causes.push({ field: 'status.conditions', message: `Forbidden: updates may not remove a condition of type "${type}"`, reason: 'FieldValueForbidden' });
    }
  }
  return causes;
}

export class CsrStore {
  /** "<user> <verb> <signerName or domain/*>" allowed (verbs sign, approve); undefined: everyone may. */
  signerGrants: Set<string> | undefined;
  private readonly objects = new Map<string, KubeObject>();
  private readonly history: { rv: number; type: string; object: KubeObject; old?: KubeObject }[] = [];
  private readonly watchers = new Set<CsrWatcher>();
  private compactedRv = 0;

  constructor(
    private readonly nextResourceVersion: () => number,
    private readonly currentResourceVersion: () => number,
  ) {}

  /** A copy of the stored CSR, or undefined. */
  get(name: string): KubeObject | undefined {
    const o = this.objects.get(name);
    return o && { kind: KIND, apiVersion: API_VERSION, ...clone(o) };
  }

  closeWatches(): void {
    for (const w of [...this.watchers]) w.close();
  }

  /** Forget watch history: watches from an older resourceVersion now get 410 Expired. */
  compact(): void {
    this.compactedRv = this.currentResourceVersion();
    this.history.length = 0;
  }

  /** Serves a request under /apis/certificates.k8s.io; false when the path is not one of this API. */
  async route(user: string, method: string, path: string, query: URLSearchParams, req: IncomingMessage, res: ServerResponse): Promise<boolean> {
    const watchPath = path.startsWith('/apis/certificates.k8s.io/v1/watch/');
    const rest = path.replace('/apis/certificates.k8s.io/v1/watch/', '/apis/certificates.k8s.io/v1/');
    if (rest !== BASE && !rest.startsWith(`${BASE}/`)) return false;
    const [name, subresource, ...extra] = rest.slice(BASE.length + 1).split('/').filter(Boolean);
    if (extra.length > 0 || (subresource !== undefined && subresource !== 'status' && subresource !== 'approval')) return false;
    const watch = watchPath || query.get('watch') === 'true' || query.get('watch') === '1';
    if (name === undefined) {
      if (method === 'GET') {
        const matches = this.fieldSelector(query.get('fieldSelector'));
        if (watch) this.startWatch(matches, query, req, res);
        else {
          const items = [...this.objects.values()].filter(matches).map(clone);
          sendJson(res, 200, { kind: `${KIND}List`, apiVersion: API_VERSION, metadata: { resourceVersion: String(this.currentResourceVersion()) }, items });
        }
      } else if (method === 'POST') sendJson(res, 201, this.create(user, await this.body(req)));
      else throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
      return true;
    }
    if (method === 'GET') {
      if (watch) this.startWatch((o) => o.metadata.name === name, query, req, res);
      else sendJson(res, 200, this.get(name) ?? (() => { throw notFound(name); })());
    } else if (method === 'PUT') sendJson(res, 200, this.update(user, name, subresource, await this.body(req)));
    else if (method === 'DELETE' && subresource === undefined) sendJson(res, 200, this.remove(name));
    else throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
    return true;
  }

  private async body(req: IncomingMessage): Promise<KubeObject> {
    const text = (await readBody(req)).toString('utf8');
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (error) {
      throw new StatusError(400, 'BadRequest', `the object provided is unrecognized: ${(error as Error).message}`);
    }
    if (!isRecord(parsed)) throw new StatusError(400, 'BadRequest', 'the object provided is unrecognized');
    const obj = parsed as KubeObject;
    if (!isRecord(obj.metadata)) obj.metadata = {};
    return obj;
  }

  private fieldSelector(selector: string | null): (o: KubeObject) => boolean {
    const terms = (selector ?? '').split(',').filter(Boolean).map((term) => {
      const m = /^([a-zA-Z.]+)(==|!=|=)(.*)$/.exec(term);
      if (!m || (m[1] !== 'metadata.name' && m[1] !== 'spec.signerName')) {
        throw new StatusError(400, 'BadRequest', `"${term}" is not a known field selector: only "metadata.name", "spec.signerName"`);
      }
      return { field: m[1], equal: m[2] !== '!=', value: m[3]! };
    });
    return (o) =>
      terms.every((t) => {
        const actual = t.field === 'metadata.name' ? o.metadata.name : isRecord(o.spec) ? o.spec.signerName : undefined;
        return (actual === t.value) === t.equal;
      });
  }

  private allowed(user: string, verb: string, signerName: string): boolean {
    if (!this.signerGrants) return true;
    const domain = signerName.split('/')[0];
    return this.signerGrants.has(`${user} ${verb} ${signerName}`) || this.signerGrants.has(`${user} ${verb} ${domain}/*`);
  }

  private create(user: string, body: KubeObject): KubeObject {
    const obj = clone(body);
    delete obj.kind;
    delete obj.apiVersion;
    if (obj.metadata.resourceVersion) throw new StatusError(400, 'BadRequest', 'resourceVersion should not be set on objects to be created');
    if (!obj.metadata.name && obj.metadata.generateName) obj.metadata.name = `${obj.metadata.generateName}${randomUUID().slice(0, 5)}`;
    const name = obj.metadata.name ?? '';
    const spec = isRecord(obj.spec) ? obj.spec : {};
    const causes: Cause[] = [];
    if (!name) causes.push({ field: 'metadata.name', message: 'Required value: name or generateName is required', reason: 'FieldValueRequired' });
    const problem = requestProblem(spec.request);
    if (problem) causes.push({ field: 'spec.request', message: problem, reason: problem === 'Required value' ? 'FieldValueRequired' : 'FieldValueInvalid' });
    const signerName = typeof spec.signerName === 'string' ? spec.signerName : '';
    if (!signerName) causes.push({ field: 'spec.signerName', message: 'Required value', reason: 'FieldValueRequired' });
    else if (signerName === 'kubernetes.io/legacy-unknown') causes.push({ field: 'spec.signerName', message: `Invalid value: "${signerName}": the legacy signerName is not allowed via this API version`, reason: 'FieldValueInvalid' });
    else if (!signerNameOk(signerName)) causes.push({ field: 'spec.signerName', message: `Invalid value: "${signerName}": must be a fully qualified domain and path of the form 'example.com/signer-name'`, reason: 'FieldValueInvalid' });
    const usages = Array.isArray(spec.usages) ? (spec.usages as unknown[]) : [];
    if (usages.length === 0) causes.push({ field: 'spec.usages', message: 'Required value', reason: 'FieldValueRequired' });
    usages.forEach((u, i) => {
      if (typeof u !== 'string' || !KNOWN_USAGES.has(u)) causes.push({ field: `spec.usages[${i}]`, message: `Unsupported value: ${JSON.stringify(u)}`, reason: 'FieldValueNotSupported' });
      else if (usages.indexOf(u) !== i) causes.push({ field: `spec.usages[${i}]`, message: `Duplicate value: "${u}"`, reason: 'FieldValueDuplicate' });
    });
    if (spec.expirationSeconds !== undefined && spec.expirationSeconds !== null && (typeof spec.expirationSeconds !== 'number' || spec.expirationSeconds < 600)) {
      causes.push({ field: 'spec.expirationSeconds', message: `Invalid value: ${String(spec.expirationSeconds)}: may not specify a duration less than 600 seconds (10 minutes)`, reason: 'FieldValueInvalid' });
    }
    if (causes.length > 0) throw invalid(name, causes);
    if (this.objects.has(name)) {
      throw new StatusError(409, 'AlreadyExists', `certificatesigningrequests.certificates.k8s.io "${name}" already exists`, { name, group: 'certificates.k8s.io', kind: 'certificatesigningrequests' });
    }
    const groups = user.startsWith('system:serviceaccount:') ? ['system:serviceaccounts', `system:serviceaccounts:${user.split(':')[2]}`, 'system:authenticated'] : ['system:authenticated'];
    obj.spec = { ...spec, username: user, uid: `uid-${user}`, groups };
    obj.status = {};
    obj.metadata.uid = randomUUID();
    obj.metadata.creationTimestamp = isoSeconds();
    return this.store(name, obj, 'ADDED');
  }

  private update(user: string, name: string, subresource: string | undefined, body: KubeObject): KubeObject {
    const current = this.objects.get(name);
    if (!current) throw notFound(name);
    if (body.metadata.name !== undefined && body.metadata.name !== name) {
      throw new StatusError(400, 'BadRequest', `the name of the object (${String(body.metadata.name)}) does not match the name on the URL (${name})`);
    }
    if (body.metadata.resourceVersion === undefined || body.metadata.resourceVersion === '') {
      throw invalid(name, [{ field: 'metadata.resourceVersion', message: 'Invalid value: 0x0: must be specified for an update', reason: 'FieldValueInvalid' }]);
    }
    if (body.metadata.resourceVersion !== current.metadata.resourceVersion) {
      throw new StatusError(409, 'Conflict', `Operation cannot be fulfilled on certificatesigningrequests.certificates.k8s.io "${name}": the object has been modified; please apply your changes to the latest version and try again`, {
        name,
        group: 'certificates.k8s.io',
        kind: 'certificatesigningrequests',
      });
    }
    const oldStatus = isRecord(current.status) ? current.status : {};
    const newStatus = isRecord(body.status) ? body.status : {};
    const oldConditions = conditionsOf(current);
    const next = clone(current);
    const signerName = String((current.spec as Record<string, unknown>).signerName);
    if (subresource === undefined) {
      // The main resource: metadata (labels, annotations) may change; spec is immutable; status is ignored.
      if (isRecord(body.spec) && JSON.stringify(sortKeys(body.spec)) !== JSON.stringify(sortKeys(current.spec))) {
        throw invalid(name, [{ field: 'spec', message: 'Forbidden: updates to certificateSigningRequest spec are forbidden', reason: 'FieldValueForbidden' }]);
      }
      next.metadata = { ...clone(body.metadata), name, uid: current.metadata.uid, creationTimestamp: current.metadata.creationTimestamp };
    } else if (subresource === 'approval') {
      const approvals = (Array.isArray(newStatus.conditions) ? (newStatus.conditions as Condition[]) : []).filter((c) => c.type === 'Approved' || c.type === 'Denied');
      const kept = oldConditions.filter((c) => c.type !== 'Approved' && c.type !== 'Denied');
      const conditions = [...approvals, ...kept];
      this.check(name, conditions, oldConditions);
      const changed = JSON.stringify(approvals) !== JSON.stringify(oldConditions.filter((c) => c.type === 'Approved' || c.type === 'Denied'));
      if (changed && !this.allowed(user, 'approve', signerName)) throw this.forbidden(user, 'approve', signerName);
      next.status = { ...oldStatus, conditions: this.stamp(conditions, oldConditions) };
    } else {
      // /status: Approved and Denied come from the stored object; certificate and the other conditions from the body.
      const conditions = [
        ...oldConditions.filter((c) => c.type === 'Approved' || c.type === 'Denied'),
        ...(Array.isArray(newStatus.conditions) ? (newStatus.conditions as Condition[]) : []).filter((c) => c.type !== 'Approved' && c.type !== 'Denied'),
      ];
      const causes = conditionCauses(conditions, oldConditions);
      const certificate = newStatus.certificate;
      if (oldStatus.certificate && certificate !== oldStatus.certificate) {
        causes.push({ field: 'status.certificate', message: 'Invalid value: "<certificate data>": updates may not modify existing certificate content', reason: 'FieldValueInvalid' });
      } else if (certificate !== undefined && certificate !== null && certificate !== '') {
        const problem = certificateProblem(certificate);
        if (problem) causes.push({ field: 'status.certificate', message: problem, reason: 'FieldValueInvalid' });
      }
      if (causes.length > 0) throw invalid(name, causes);
      const changed = (certificate ?? '') !== (oldStatus.certificate ?? '') || JSON.stringify(conditions.map((c) => c.type)) !== JSON.stringify(oldConditions.map((c) => c.type));
      // The CertificateSigning admission plugin: changing the certificate or the conditions needs `sign`.
      if (changed && !this.allowed(user, 'sign', signerName)) {
        throw new StatusError(403, 'Forbidden', `certificatesigningrequests.certificates.k8s.io "${name}" is forbidden: user not permitted to sign requests with signerName "${signerName}"`, {
          name,
          group: 'certificates.k8s.io',
          kind: 'certificatesigningrequests',
        });
      }
      next.status = { ...(certificate ? { certificate } : {}), conditions: this.stamp(conditions, oldConditions) };
    }
    if (JSON.stringify(sortKeys(next)) === JSON.stringify(sortKeys(current))) return this.get(name)!;
    return this.store(name, next, 'MODIFIED', current);
  }

  private check(name: string, conditions: Condition[], old: Condition[]): void {
    const causes = conditionCauses(conditions, old);
    if (causes.length > 0) throw invalid(name, causes);
  }

  private forbidden(user: string, verb: string, signerName: string): StatusError {
    return new StatusError(403, 'Forbidden', `signers.certificates.k8s.io "${signerName}" is forbidden: User "${user}" cannot ${verb} resource "signers" in API group "certificates.k8s.io" at the cluster scope`, {
      name: signerName,
      group: 'certificates.k8s.io',
      kind: 'signers',
    });
  }

  /** Fills lastTransitionTime (and lastUpdateTime) of new conditions, as the API server does. */
  private stamp(conditions: Condition[], old: Condition[]): Condition[] {
    const now = isoSeconds();
    return conditions.map((c) => {
      const before = old.find((o) => o.type === c.type);
      // Stored at second precision, as the API server's metav1.Time is.
      const seconds = (t: unknown): string | undefined => (typeof t === 'string' && !Number.isNaN(Date.parse(t)) ? isoSeconds(new Date(t)) : undefined);
      return { ...c, lastTransitionTime: seconds(c.lastTransitionTime) ?? seconds(before?.lastTransitionTime) ?? now, lastUpdateTime: seconds(c.lastUpdateTime) ?? now };
    });
  }

  private remove(name: string): Record<string, unknown> {
    const current = this.objects.get(name);
    if (!current) throw notFound(name);
    this.objects.delete(name);
    const last = clone(current);
    last.metadata.resourceVersion = String(this.nextResourceVersion());
    this.emit('DELETED', last);
    return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { name, group: 'certificates.k8s.io', kind: 'certificatesigningrequests', uid: current.metadata.uid } };
  }

  private store(name: string, obj: KubeObject, type: 'ADDED' | 'MODIFIED', old?: KubeObject): KubeObject {
    obj.metadata.resourceVersion = String(this.nextResourceVersion());
    this.objects.set(name, obj);
    this.emit(type, obj, old);
    return this.get(name)!;
  }

  private emit(type: string, object: KubeObject, old?: KubeObject): void {
    const event = { rv: Number(object.metadata.resourceVersion), type, object: clone(object), ...(old ? { old: clone(old) } : {}) };
    this.history.push(event);
    for (const w of this.watchers) this.deliver(w, event);
  }

  private deliver(w: CsrWatcher, event: { type: string; object: KubeObject; old?: KubeObject }): void {
    const now = w.matches(event.object);
    const before = event.old ? w.matches(event.old) : false;
    let type: string | undefined = now ? event.type : undefined;
    if (event.type === 'MODIFIED') type = before && now ? 'MODIFIED' : now ? 'ADDED' : before ? 'DELETED' : undefined;
    if (type) w.res.write(`${JSON.stringify({ type, object: { kind: KIND, apiVersion: API_VERSION, ...event.object } })}\n`);
  }

  private startWatch(matches: (o: KubeObject) => boolean, query: URLSearchParams, req: IncomingMessage, res: ServerResponse): void {
    const rvParam = query.get('resourceVersion') ?? '';
    const from = rvParam === '' ? 0 : Number(rvParam);
    if (!Number.isInteger(from) || from < 0) throw new StatusError(400, 'BadRequest', `invalid resource version: ${rvParam}`);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private', 'Transfer-Encoding': 'chunked' });
    res.flushHeaders();
    if (rvParam !== '' && rvParam !== '0' && from < this.compactedRv) {
      res.write(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${rvParam} (${this.compactedRv})`, reason: 'Expired', code: 410 } })}\n`);
      res.end();
      return;
    }
    let closed = false;
    const w: CsrWatcher = {
      matches,
      res,
      close: () => {
        if (closed) return;
        closed = true;
        this.watchers.delete(w);
        res.end();
      },
    };
    if (rvParam === '' || rvParam === '0') {
      for (const o of this.objects.values()) if (matches(o)) res.write(`${JSON.stringify({ type: 'ADDED', object: { kind: KIND, apiVersion: API_VERSION, ...o } })}\n`);
    } else {
      for (const event of this.history) if (event.rv > from) this.deliver(w, event);
    }
    this.watchers.add(w);
    req.on('close', () => w.close());
    res.on('close', () => w.close());
  }
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (isRecord(v)) return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  return v;
}
