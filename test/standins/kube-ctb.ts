/**
 * ClusterTrustBundle (certificates.k8s.io) for the Kubernetes stand-in (test code only), as the reference's §2 and
 * §4 describe it:
 *  - served at the versions in `versions` (default v1alpha1 + v1beta1, as on 1.33-1.36; ['v1beta1', 'v1'] is
 *    1.37), cluster-scoped, no status subresource, with discovery: `/apis` lists the group, `/apis/certificates.k8s.io`
 *    its versions (v1 is always there: it serves CertificateSigningRequests, ./kube-csr.ts), `/apis/certificates.k8s.io/<v>`
 *    the resources (clustertrustbundles only where served);
 *  - get, list and watch (field selectors metadata.name and spec.signerName, label selectors not needed), create,
 *    update (PUT; 409 Conflict on a stale resourceVersion), delete;
 *  - validation with the API's 422 Invalid: the name (signer-linked: `<signer with "/" as ":">:` then a DNS
 *    subdomain; unlinked: no ":"), spec.signerName (a valid signer name, immutable), spec.trustBundle (at most
 *    1 MiB; every PEM block a CERTIFICATE without headers that parses as a CA certificate; no duplicate; at least
 *    one; text around blocks ignored; re-parsed on update only when it changed);
 *  - the ClusterTrustBundleAttest admission check: creating or updating a signer-linked bundle needs `attest` on
 *    `signers` for that name or `<domain>/*`, from `attestGrants` ("<user> <signer name or domain/*>"); 403 else.
 *    Ordinary verbs honour the stand-in's `state.forbidden` ("create clustertrustbundles", ...).
 *  - `log`: every request's method, path and answer code (so a test can assert that no write got a 422).
 * Not implemented: PATCH, deletecollection, label selectors, server-side apply, garbage collection.
 */
import { X509Certificate } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isRecord, readBody, sendJson } from './http-util.js';
import { StatusError } from './kube.js';

export const CERTIFICATES_GROUP = 'certificates.k8s.io';
const KIND = 'ClusterTrustBundle';
const RESOURCE = 'clustertrustbundles';
const MAX_TRUST_BUNDLE_SIZE = 1024 * 1024;
const ALL_VERSIONS = ['v1', 'v1beta1', 'v1alpha1'];
const CSR_RESOURCES = [
  { name: 'certificatesigningrequests', singularName: 'certificatesigningrequest', namespaced: false, kind: 'CertificateSigningRequest', verbs: ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'], shortNames: ['csr'] },
  { name: 'certificatesigningrequests/approval', singularName: '', namespaced: false, kind: 'CertificateSigningRequest', verbs: ['get', 'patch', 'update'] },
  { name: 'certificatesigningrequests/status', singularName: '', namespaced: false, kind: 'CertificateSigningRequest', verbs: ['get', 'patch', 'update'] },
];

interface Bundle {
  metadata: { name: string; uid: string; resourceVersion: string; creationTimestamp: string; labels?: Record<string, string>; [k: string]: unknown };
  spec: { signerName?: string; trustBundle: string };
}

interface Cause {
  field: string;
  message: string;
  reason: string;
}

const invalid = (name: string, causes: Cause[]): StatusError => {
  const text = causes.map((c) => `${c.field}: ${c.message}`);
  return new StatusError(422, 'Invalid', `${KIND}.${CERTIFICATES_GROUP} "${name}" is invalid: ${text.length === 1 ? text[0] : `[${text.join(', ')}]`}`, {
    name,
    group: CERTIFICATES_GROUP,
    kind: KIND,
    causes: causes.map((c) => ({ reason: c.reason, message: c.message, field: c.field })),
  });
};
const omitted = (field: string, message: string): Cause => ({ field, reason: 'FieldValueInvalid', message: `Invalid value: "<value omitted>": ${message}` });

const DNS_LABEL = /^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$/;
const isDnsSubdomain = (s: string): boolean => s.length > 0 && s.length <= 253 && /^[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?$/.test(s) && s.split('.').every((l) => l.length > 0);

/** ValidateSignerName (names.go), worded like it. */
function signerNameCauses(signerName: string): Cause[] {
  const field = 'spec.signerName';
  const at = (value: string, message: string): Cause => ({ field, reason: 'FieldValueInvalid', message: `Invalid value: "${value}": ${message}` });
  const segments = signerName.split('/');
  if (segments.length !== 2) return [at(signerName, "must be a fully qualified domain and path of the form 'example.com/signer-name'")];
  const [domain, path] = segments as [string, string];
  const causes: Cause[] = [];
  if (domain.length > 253) causes.push({ field, reason: 'FieldValueTooLong', message: 'Too long: may not be more than 253 bytes' });
  const bad = domain.split('.').find((l) => l.length > 63 || !DNS_LABEL.test(l));
  if (bad !== undefined) causes.push(at(domain, `validating label "${bad}": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'`));
  if (domain.split('.').length < 2) causes.push(at(domain, 'should be a domain with at least two segments separated by dots'));
  const badPath = path.split('.').find((l) => !isDnsSubdomain(l));
  if (badPath !== undefined) causes.push(at(path, `validating label "${badPath}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'`));
  if (signerName.length > 571) causes.push({ field, reason: 'FieldValueTooLong', message: 'Too long: may not be more than 571 bytes' });
  return causes;
}

/** One PEM block as Go's pem.Decode finds it: type, headers (lines with ":" before a blank line), bytes. */
function pemBlocks(text: string): { type: string; headers: boolean; der: Buffer | undefined }[] {
  const blocks: { type: string; headers: boolean; der: Buffer | undefined }[] = [];
  const re = /-----BEGIN ([^\n-]*)-----\r?\n([\s\S]*?)-----END \1-----/g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    let body = m[2]!;
    let headers = false;
    const lines = body.split(/\r?\n/);
    if (lines[0]?.includes(':')) {
      headers = true;
      const blank = lines.findIndex((l) => l.trim() === '');
      body = lines.slice(blank + 1).join('\n');
    }
    const compact = body.replace(/\s+/g, '');
    const der = /^[A-Za-z0-9+/]*={0,2}$/.test(compact) && compact.length % 4 === 0 ? Buffer.from(compact, 'base64') : undefined;
    blocks.push({ type: m[1]!, headers, der });
  }
  return blocks;
}

/** validateTrustBundle (validation.go). */
function trustBundleCauses(bundle: string): Cause[] {
  const field = 'spec.trustBundle';
  if (bundle.length > MAX_TRUST_BUNDLE_SIZE) return [{ field, reason: 'FieldValueTooLong', message: `Too long: may not be more than ${MAX_TRUST_BUNDLE_SIZE} bytes` }];
  const causes: Cause[] = [];
  const seen = new Map<string, number[]>();
  pemBlocks(bundle).forEach((block, i) => {
    if (block.type !== 'CERTIFICATE') return causes.push(omitted(field, `entry ${i} has bad block type: ${block.type}`));
    if (block.headers) return causes.push(omitted(field, `entry ${i} has PEM block headers`));
    let cert: X509Certificate;
    try {
      if (!block.der) throw new Error('bad base64');
      cert = new X509Certificate(block.der);
    } catch {
      return causes.push(omitted(field, `entry ${i} does not parse as X.509`));
    }
    if (!cert.ca) return causes.push(omitted(field, `entry ${i} does not have the CA bit set`));
    const key = block.der!.toString('base64');
    seen.set(key, [...(seen.get(key) ?? []), i]);
    return undefined;
  });
  if (causes.length > 0) return causes;
  if (seen.size === 0) causes.push(omitted(field, 'at least one trust anchor must be provided'));
  for (const indices of seen.values()) if (indices.length > 1) causes.push(omitted(field, `duplicate trust anchor (indices [${indices.join(' ')}])`));
  return causes;
}

function nameCauses(name: string, signerName: string | undefined): Cause[] {
  const at = (message: string): Cause => ({ field: 'metadata.name', reason: 'FieldValueInvalid', message: `Invalid value: "${name}": ${message}` });
  if (!signerName) {
    if (name.includes(':')) return [at('ClusterTrustBundle without signer name must not have ":" in its name')];
    return isDnsSubdomain(name) ? [] : [at("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'")];
  }
  const prefix = `${signerName.replaceAll('/', ':')}:`;
  if (!name.startsWith(prefix)) return [at(`ClusterTrustBundle for signerName ${signerName} must be named with prefix ${prefix}`)];
  return isDnsSubdomain(name.slice(prefix.length)) ? [] : [at("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'")];
}

interface Watcher {
  version: string;
  matches: (b: Bundle) => boolean;
  res: ServerResponse;
}

export class ClusterTrustBundleApi {
  /** The versions that serve ClusterTrustBundle (1.33-1.36: v1alpha1 and v1beta1; 1.37: v1beta1 and v1). */
  versions: string[] = ['v1alpha1', 'v1beta1'];
  /** "<user> <signerName>" or "<user> <domain>/*": who may attest for a signer (create/update signer-linked bundles). */
  readonly attestGrants = new Set<string>();
  /** Every request to the API, with its answer. */
  readonly log: { method: string; path: string; code: number; reason?: string; message?: string }[] = [];
  private readonly bundles = new Map<string, Bundle>();
  private readonly watchers = new Set<Watcher>();
  private readonly history: { type: string; bundle: Bundle }[] = [];
  private rv = 1;
  private uid = 0;

  constructor(private readonly forbidden: ReadonlySet<string>) {}

  get(name: string): Bundle | undefined {
    return structuredClone(this.bundles.get(name));
  }

  /** Writes as another user with every right would (no validation, no admission): an operator's edit. */
  put(name: string, spec: Bundle['spec'], labels?: Record<string, string>): void {
    const old = this.bundles.get(name);
    const bundle: Bundle = {
      metadata: { ...(old?.metadata ?? { name, uid: `ctb-${++this.uid}`, creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z') }), resourceVersion: String(++this.rv) },
      spec,
    };
    if (labels) bundle.metadata.labels = labels;
    else delete bundle.metadata.labels;
    this.store(bundle, old ? 'MODIFIED' : 'ADDED');
  }

  /** Deletes as an operator would. */
  remove(name: string): boolean {
    const old = this.bundles.get(name);
    if (!old) return false;
    this.bundles.delete(name);
    this.emit('DELETED', { ...old, metadata: { ...old.metadata, resourceVersion: String(++this.rv) } });
    return true;
  }

  closeWatches(): void {
    for (const w of this.watchers) w.res.end();
    this.watchers.clear();
  }

  private store(bundle: Bundle, type: 'ADDED' | 'MODIFIED'): void {
    this.bundles.set(bundle.metadata.name, bundle);
    this.emit(type, bundle);
  }

  private emit(type: string, bundle: Bundle): void {
    this.history.push({ type, bundle: structuredClone(bundle) });
    for (const w of this.watchers) if (w.matches(bundle)) w.res.write(`${JSON.stringify({ type, object: this.typed(bundle, w.version) })}\n`);
  }

  private typed(bundle: Bundle, version: string): Record<string, unknown> {
    return { apiVersion: `${CERTIFICATES_GROUP}/${version}`, kind: KIND, ...structuredClone(bundle) };
  }

  private check(user: string, verb: string, name?: string): void {
    if (!this.forbidden.has(`${verb} ${RESOURCE}`)) return;
    throw new StatusError(403, 'Forbidden', `${RESOURCE}.${CERTIFICATES_GROUP}${name ? ` "${name}"` : ''} is forbidden: User "${user}" cannot ${verb} resource "${RESOURCE}" in API group "${CERTIFICATES_GROUP}" at the cluster scope`, {
      ...(name ? { name } : {}),
      group: CERTIFICATES_GROUP,
      kind: RESOURCE,
    });
  }

  /** ClusterTrustBundleAttest admission. */
  private attest(user: string, bundle: Bundle): void {
    const signer = bundle.spec.signerName;
    if (!signer) return;
    const domain = signer.split('/')[0];
    if (this.attestGrants.has(`${user} ${signer}`) || this.attestGrants.has(`${user} ${domain}/*`)) return;
    throw new StatusError(403, 'Forbidden', `${RESOURCE}.${CERTIFICATES_GROUP} "${bundle.metadata.name}" is forbidden: user not permitted to attest for signerName "${signer}"`, {
      name: bundle.metadata.name,
      group: CERTIFICATES_GROUP,
      kind: RESOURCE,
    });
  }

  private parse(body: unknown, version: string): Bundle {
    if (!isRecord(body) || !isRecord(body.metadata) || !isRecord(body.spec)) throw new StatusError(400, 'BadRequest', `the object provided is unrecognized (${KIND} needs metadata and spec)`);
    if (body.apiVersion !== undefined && body.apiVersion !== `${CERTIFICATES_GROUP}/${version}`) {
      throw new StatusError(400, 'BadRequest', `the API version in the data (${String(body.apiVersion)}) does not match the expected API version (${CERTIFICATES_GROUP}/${version})`);
    }
    const spec = body.spec;
    if (spec.signerName !== undefined && typeof spec.signerName !== 'string') throw new StatusError(400, 'BadRequest', 'spec.signerName must be a string');
    if (typeof spec.trustBundle !== 'string') throw invalid(String(body.metadata.name ?? ''), [{ field: 'spec.trustBundle', reason: 'FieldValueRequired', message: 'Required value' }]);
    return {
      metadata: structuredClone(body.metadata) as Bundle['metadata'],
      spec: { ...(spec.signerName ? { signerName: spec.signerName } : {}), trustBundle: spec.trustBundle },
    };
  }

  private validate(bundle: Bundle, old?: Bundle): void {
    const name = bundle.metadata.name;
    const causes = nameCauses(name, bundle.spec.signerName);
    if (bundle.spec.signerName) causes.push(...signerNameCauses(bundle.spec.signerName));
    if (!old || old.spec.trustBundle !== bundle.spec.trustBundle) causes.push(...trustBundleCauses(bundle.spec.trustBundle));
    if (old && (old.spec.signerName ?? '') !== (bundle.spec.signerName ?? '')) {
      causes.push({ field: 'spec.signerName', reason: 'FieldValueInvalid', message: `Invalid value: "${bundle.spec.signerName ?? ''}": field is immutable` });
    }
    if (causes.length > 0) throw invalid(name, causes);
  }

  /** Serves the request if it is ClusterTrustBundle's or the certificates group's discovery; false otherwise. */
  /** Other certificates.k8s.io resources for discovery, by version (kube-pcr.ts adds PodCertificateRequests). */
  readonly discoveryExtras: ((version: string) => Record<string, unknown>[])[] = [];

  private extras(version: string): Record<string, unknown>[] {
    return this.discoveryExtras.flatMap((extra) => extra(version));
  }

  async handle(req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams, user: string): Promise<boolean> {
    const method = (req.method ?? 'GET').toUpperCase();
    if (path === '/apis' && method === 'GET') {
      sendJson(res, 200, { kind: 'APIGroupList', apiVersion: 'v1', groups: [this.group()] });
      return true;
    }
    const m = /^\/apis\/certificates\.k8s\.io(?:\/([^/]+))?(?:\/(watch))?(?:\/([^/]+))?(?:\/([^/]+))?$/.exec(path);
    if (!m) return false;
    const [, version, watchSegment, resource, encodedName] = m;
    const name = encodedName === undefined ? undefined : decodeURIComponent(encodedName);
    if (!version) {
      sendJson(res, 200, this.group());
      return true;
    }
    if (!ALL_VERSIONS.includes(version)) throw new StatusError(404, 'NotFound', 'the server could not find the requested resource', {});
    const served = this.versions.includes(version);
    if (!resource) {
      if (version !== 'v1' && !served && this.extras(version).length === 0) throw new StatusError(404, 'NotFound', 'the server could not find the requested resource', {});
      sendJson(res, 200, {
        kind: 'APIResourceList',
        apiVersion: 'v1',
        groupVersion: `${CERTIFICATES_GROUP}/${version}`,
        resources: [
          // certificates.k8s.io/v1 always serves CertificateSigningRequests (./kube-csr.ts).
          ...(version === 'v1' ? CSR_RESOURCES : []),
          ...this.extras(version),
          ...(served ? [{ name: RESOURCE, singularName: 'clustertrustbundle', namespaced: false, kind: KIND, verbs: ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'] }] : []),
        ],
      });
      return true;
    }
    if (resource !== RESOURCE || !served) return false;
    const entry: (typeof this.log)[number] = { method, path, code: 200 };
    this.log.push(entry);
    try {
      await this.serve(method, version, name, watchSegment !== undefined || query.get('watch') === 'true' || query.get('watch') === '1', query, req, res, user);
      entry.code = res.statusCode;
    } catch (error) {
      if (error instanceof StatusError) {
        entry.code = error.code;
        entry.reason = error.reason;
        entry.message = error.message;
      }
      throw error;
    }
    return true;
  }

  private group(): Record<string, unknown> {
    const versions = ALL_VERSIONS.filter((v) => v === 'v1' || this.versions.includes(v) || this.extras(v).length > 0).map((v) => ({ groupVersion: `${CERTIFICATES_GROUP}/${v}`, version: v }));
    return { kind: 'APIGroup', apiVersion: 'v1', name: CERTIFICATES_GROUP, versions, preferredVersion: versions[0] };
  }

  private async serve(method: string, version: string, name: string | undefined, watch: boolean, query: URLSearchParams, req: IncomingMessage, res: ServerResponse, user: string): Promise<void> {
    const readJson = async (): Promise<unknown> => {
      const text = (await readBody(req)).toString('utf8');
      try {
        return text ? (JSON.parse(text) as unknown) : undefined;
      } catch (e) {
        throw new StatusError(400, 'BadRequest', `the object provided is unrecognized: ${(e as Error).message}`);
      }
    };
    if (method === 'GET' && (watch || name === undefined)) {
      const filters: ((b: Bundle) => boolean)[] = [];
      if (name !== undefined) filters.push((b) => b.metadata.name === name);
      for (const term of (query.get('fieldSelector') ?? '').split(',').filter(Boolean)) {
        const f = /^(metadata\.name|spec\.signerName)(==|=|!=)(.*)$/.exec(term);
        if (!f) throw new StatusError(400, 'BadRequest', `field label not supported: ${term.split(/!?=/)[0]}`);
        const get = (b: Bundle): string => (f[1] === 'metadata.name' ? b.metadata.name : (b.spec.signerName ?? ''));
        filters.push(f[2] === '!=' ? (b) => get(b) !== f[3] : (b) => get(b) === f[3]);
      }
      const matches = (b: Bundle): boolean => filters.every((p) => p(b));
      if (!watch) {
        this.check(user, 'list');
        const items = [...this.bundles.values()].filter(matches).map((b) => structuredClone(b));
        sendJson(res, 200, { kind: `${KIND}List`, apiVersion: `${CERTIFICATES_GROUP}/${version}`, metadata: { resourceVersion: String(this.rv) }, items });
        return;
      }
      this.check(user, 'watch', name);
      res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' });
      const from = Number(query.get('resourceVersion') ?? '0');
      if (from > 0) {
        for (const ev of this.history) if (Number(ev.bundle.metadata.resourceVersion) > from && matches(ev.bundle)) res.write(`${JSON.stringify({ type: ev.type, object: this.typed(ev.bundle, version) })}\n`);
      } else for (const b of this.bundles.values()) if (matches(b)) res.write(`${JSON.stringify({ type: 'ADDED', object: this.typed(b, version) })}\n`);
      const w: Watcher = { version, matches, res };
      this.watchers.add(w);
      req.on('close', () => this.watchers.delete(w));
      return;
    }
    if (method === 'POST' && name === undefined) {
      this.check(user, 'create');
      const bundle = this.parse(await readJson(), version);
      if (!bundle.metadata.name) throw invalid('', [{ field: 'metadata.name', reason: 'FieldValueRequired', message: 'Required value: name or generateName is required' }]);
      if (bundle.metadata.resourceVersion) throw new StatusError(400, 'BadRequest', 'resourceVersion should not be set on objects to be created');
      this.validate(bundle);
      this.attest(user, bundle);
      if (this.bundles.has(bundle.metadata.name)) throw new StatusError(409, 'AlreadyExists', `${RESOURCE}.${CERTIFICATES_GROUP} "${bundle.metadata.name}" already exists`, { name: bundle.metadata.name, group: CERTIFICATES_GROUP, kind: RESOURCE });
      bundle.metadata = { ...bundle.metadata, uid: `ctb-${++this.uid}`, resourceVersion: String(++this.rv), creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z') };
      this.store(bundle, 'ADDED');
      sendJson(res, 201, this.typed(bundle, version));
      return;
    }
    if (name === undefined) throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
    const notFound = (): StatusError => new StatusError(404, 'NotFound', `${RESOURCE}.${CERTIFICATES_GROUP} "${name}" not found`, { name, group: CERTIFICATES_GROUP, kind: RESOURCE });
    const current = this.bundles.get(name);
    switch (method) {
      case 'GET':
        this.check(user, 'get', name);
        if (!current) throw notFound();
        sendJson(res, 200, this.typed(current, version));
        return;
      case 'PUT': {
        this.check(user, 'update', name);
        const bundle = this.parse(await readJson(), version);
        if (!current) throw notFound();
        if (bundle.metadata.name !== name) throw new StatusError(400, 'BadRequest', `the name of the object (${String(bundle.metadata.name)}) does not match the name on the URL (${name})`);
        if (!bundle.metadata.resourceVersion) throw invalid(name, [{ field: 'metadata.resourceVersion', reason: 'FieldValueInvalid', message: 'Invalid value: 0x0: must be specified for an update' }]);
        if (bundle.metadata.resourceVersion !== current.metadata.resourceVersion) {
          throw new StatusError(409, 'Conflict', `Operation cannot be fulfilled on ${RESOURCE}.${CERTIFICATES_GROUP} "${name}": the object has been modified; please apply your changes to the latest version and try again`, { name, group: CERTIFICATES_GROUP, kind: RESOURCE });
        }
        this.validate(bundle, current);
        this.attest(user, bundle);
        bundle.metadata = { ...bundle.metadata, uid: current.metadata.uid, creationTimestamp: current.metadata.creationTimestamp, resourceVersion: String(++this.rv) };
        this.store(bundle, 'MODIFIED');
        sendJson(res, 200, this.typed(bundle, version));
        return;
      }
      case 'DELETE':
        this.check(user, 'delete', name);
        if (!current) throw notFound();
        this.remove(name);
        sendJson(res, 200, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success', details: { name, group: CERTIFICATES_GROUP, kind: RESOURCE, uid: current.metadata.uid } });
        return;
      default:
        throw new StatusError(405, 'MethodNotAllowed', 'the server does not allow this method on the requested resource');
    }
  }
}
