/**
 * SDS resource names and what they serve:
 *   default                     -> tls_certificate: the workload's key and certificate chain
 *   ROOTCA                      -> validation_context.trusted_ca: the own trust domain's roots (all of them, flat)
 *   ALL                         -> validation_context.custom_validator_config: Envoy's SPIFFE certificate validator
 *                                  with one entry per trust domain (own, each alias, each federated trust domain),
 *                                  so each peer is checked against its own trust domain's roots only
 *   spiffe://<trust-domain>     -> validation_context.trusted_ca: that trust domain's roots (own, alias or federated)
 *   file-cert:<cert>~<key>      -> tls_certificate read from two files
 *   file-root:<path>            -> validation_context.trusted_ca read from a file
 * The own roots are the agent's verified trust bundle (from the CA's answers); aliases and federated bundles come
 * from the CA's trust-bundle feed (trust-bundles.ts). `ALL` and `spiffe://<trust-domain>` are pushed again when
 * either changes. `spiffe://<trust-domain>` for a trust domain the agent does not know (yet) is NOT_FOUND; a trust
 * domain that leaves the set ends the stream with NOT_FOUND (SotW) or is reported removed (delta).
 * Every stream first proves a workload identity with its token (node mode) or the pod's token file (sidecar
 * mode), whatever it asks for: nothing is served to a stream that proved nothing.
 */
import * as path from 'node:path';
import { status as GrpcStatus, type Metadata } from '@grpc/grpc-js';
import type { AgentMode } from '../config/agent.js';
import type { Logger } from '../log.js';
import { ownedCopy } from '../util/buffers.js';
import { createHash } from 'node:crypto';
import {
  bundlePem,
  certificatesFromPem,
  keysMatch,
  loadPrivateKey,
  parseCertificate,
  certificatePublicKey,
  validateTrustDomain,
  type SpiffeBundle,
} from '../pki/index.js';
import { encodeSecretAny, encodeSpiffeValidatorAny, SPIFFE_VALIDATOR_NAME, type Init, type SecretMessage } from '../wire/protos.js';
import { checkWorkloadToken, SDS_TOKEN_HEADER, tokenFromMetadata, type WorkloadCredential } from './credentials.js';
import { SdsError } from './errors.js';
import type { FileContent, FileWatch, FileWatcher } from './files.js';
import type { AgentMetrics } from './metrics.js';
import { NO_FEDERATION, type FederationState, type FederationView } from './trust-bundles.js';
import type { IdentityLease, IdentitySecret, TrustBundle, WorkloadSecrets } from './workload-secrets.js';

export interface ResourceSnapshot {
  name: string;
  /** Content version: equal versions are the same bytes. */
  version: string;
  /** The Secret as a google.protobuf.Any, encoded once and shared by every stream. */
  any: { type_url: string; value: Buffer };
  /** For logs and metrics: the certificate expiry of what is served, when known. */
  notAfter?: Date;
}

export interface ResourceWatch {
  current(): ResourceSnapshot;
  onChange(listener: (snapshot: ResourceSnapshot) => void): void;
  /** The resource stopped existing (a trust domain left the set): the stream reports it (SdsError NOT_FOUND). */
  onGone?(listener: (error: SdsError) => void): void;
  close(): void;
}

export type ParsedResourceName =
  | { kind: 'default' }
  | { kind: 'ROOTCA' }
  | { kind: 'ALL' }
  | { kind: 'trust-domain'; trustDomain: string }
  | { kind: 'file-cert'; certPath: string; keyPath: string }
  | { kind: 'file-root'; path: string };

export const RESOURCE_NAMES_HELP = 'default, ROOTCA, ALL, spiffe://<trust-domain>, file-cert:<cert-path>~<key-path> or file-root:<path>';

const SPIFFE_PREFIX = 'spiffe://';

export function parseResourceName(name: string): ParsedResourceName | null {
  if (name === 'default') return { kind: 'default' };
  if (name === 'ROOTCA') return { kind: 'ROOTCA' };
  if (name === 'ALL') return { kind: 'ALL' };
  if (name.startsWith(SPIFFE_PREFIX)) {
    const trustDomain = name.slice(SPIFFE_PREFIX.length);
    try {
      validateTrustDomain(trustDomain);
    } catch {
      return null;
    }
    return { kind: 'trust-domain', trustDomain };
  }
  if (name.startsWith('file-cert:')) {
    const rest = name.slice('file-cert:'.length);
    const separator = rest.indexOf('~');
    if (separator <= 0 || separator === rest.length - 1) return null;
    return { kind: 'file-cert', certPath: rest.slice(0, separator), keyPath: rest.slice(separator + 1) };
  }
  if (name.startsWith('file-root:') && name.length > 'file-root:'.length) return { kind: 'file-root', path: name.slice('file-root:'.length) };
  return null;
}

function snapshotOf(name: string, version: string, secret: Init<SecretMessage>, notAfter?: Date): ResourceSnapshot {
  const encoded = encodeSecretAny(secret);
  // Kept while the secret is current and shared by every stream of it: in memory of its own, not a pool slab.
  return { name, version, any: { ...encoded, value: ownedCopy(encoded.value) }, ...(notAfter ? { notAfter } : {}) };
}

/** Encodes each secret/bundle once; 500 streams watching one identity share the bytes. */
const defaultSnapshots = new WeakMap<IdentitySecret, ResourceSnapshot>();
const rootSnapshots = new WeakMap<TrustBundle, ResourceSnapshot>();

function defaultSnapshot(secret: IdentitySecret): ResourceSnapshot {
  let snapshot = defaultSnapshots.get(secret);
  if (!snapshot) {
    snapshot = snapshotOf(
      'default',
      secret.version,
      {
        name: 'default',
        tls_certificate: {
          certificate_chain: { inline_bytes: Buffer.from(secret.chainPem) },
          private_key: { inline_bytes: Buffer.from(secret.keyPem) },
        },
      },
      secret.leaf.notAfter,
    );
    defaultSnapshots.set(secret, snapshot);
  }
  return snapshot;
}

function rootSnapshot(bundle: TrustBundle): ResourceSnapshot {
  let snapshot = rootSnapshots.get(bundle);
  if (!snapshot) {
    snapshot = snapshotOf('ROOTCA', bundle.version, {
      name: 'ROOTCA',
      validation_context: { trusted_ca: { inline_bytes: Buffer.from(bundle.pem) } },
    });
    rootSnapshots.set(bundle, snapshot);
  }
  return snapshot;
}

/** A federated bundle's PEM and content version, made once per bundle object. */
const bundleTexts = new WeakMap<SpiffeBundle, { pem: string; version: string }>();

function bundleText(bundle: SpiffeBundle): { pem: string; version: string } {
  let text = bundleTexts.get(bundle);
  if (!text) {
    const hash = createHash('sha256');
    for (const cert of bundle.x509Authorities) hash.update(cert.der);
    text = { pem: bundlePem(bundle), version: hash.digest('hex').slice(0, 32) };
    bundleTexts.set(bundle, text);
  }
  return text;
}

/** ALL, encoded once per (own bundle, federation set): every stream watching it shares the bytes. */
const allSnapshots = new WeakMap<TrustBundle, WeakMap<FederationState, ResourceSnapshot>>();

function allSnapshot(trustDomain: string, own: TrustBundle, state: FederationState): ResourceSnapshot {
  let byState = allSnapshots.get(own);
  if (!byState) {
    byState = new WeakMap();
    allSnapshots.set(own, byState);
  }
  let snapshot = byState.get(state);
  if (!snapshot) {
    const ownPem = Buffer.from(own.pem);
    const trustDomains = [
      { name: trustDomain, trust_bundle: { inline_bytes: ownPem } },
      ...state.aliases.map((alias) => ({ name: alias, trust_bundle: { inline_bytes: ownPem } })),
      ...state.federated.map((bundle) => ({ name: bundle.trustDomain, trust_bundle: { inline_bytes: Buffer.from(bundleText(bundle).pem) } })),
    ];
    // No trusted_ca beside the validator: with custom_validator_config set, Envoy leaves all validation to it.
    snapshot = snapshotOf('ALL', `${own.version}.${state.version || 'own'}`, {
      name: 'ALL',
      validation_context: {
        custom_validator_config: { name: SPIFFE_VALIDATOR_NAME, typed_config: encodeSpiffeValidatorAny({ trust_domains: trustDomains }) },
      },
    });
    byState.set(state, snapshot);
  }
  return snapshot;
}

/** The roots of one trust domain: what keys its cached snapshot, its PEM and its version. */
interface TrustDomainRoots {
  key: object;
  pem: string;
  version: string;
}

/** spiffe://<trust-domain>, encoded once per bundle object and name. */
const trustDomainSnapshots = new WeakMap<object, Map<string, ResourceSnapshot>>();

function trustDomainSnapshot(name: string, roots: TrustDomainRoots): ResourceSnapshot {
  let byName = trustDomainSnapshots.get(roots.key);
  if (!byName) {
    byName = new Map();
    trustDomainSnapshots.set(roots.key, byName);
  }
  let snapshot = byName.get(name);
  if (!snapshot) {
    snapshot = snapshotOf(name, roots.version, { name, validation_context: { trusted_ca: { inline_bytes: Buffer.from(roots.pem) } } });
    byName.set(name, snapshot);
  }
  return snapshot;
}

/** Fail closed on file content: a chain must parse and match its key, a root file must hold certificates. */
function fileCertSnapshot(name: string, cert: FileContent, key: FileContent): ResourceSnapshot {
  const certs = certificatesFromPem(cert.data.toString('utf8'));
  if (certs.length === 0) throw new SdsError(GrpcStatus.FAILED_PRECONDITION, `${cert.path} holds no PEM certificate`);
  const leaf = parseCertificate(certs[0]!);
  let privateKey;
  try {
    privateKey = loadPrivateKey(key.data, key.path);
  } catch (error) {
    throw new SdsError(GrpcStatus.FAILED_PRECONDITION, (error as Error).message);
  }
  if (!keysMatch(privateKey, certificatePublicKey(leaf))) {
    throw new SdsError(GrpcStatus.FAILED_PRECONDITION, `the key in ${key.path} does not belong to the certificate in ${cert.path}`);
  }
  return snapshotOf(
    name,
    `${cert.version}.${key.version}`,
    { name, tls_certificate: { certificate_chain: { inline_bytes: cert.data }, private_key: { inline_bytes: key.data } } },
    leaf.notAfter,
  );
}

function fileRootSnapshot(name: string, root: FileContent): ResourceSnapshot {
  const certs = certificatesFromPem(root.data.toString('utf8'));
  if (certs.length === 0) throw new SdsError(GrpcStatus.FAILED_PRECONDITION, `${root.path} holds no PEM certificate`);
  const earliest = certs.map(parseCertificate).reduce((a, b) => (a.notAfter <= b.notAfter ? a : b));
  return snapshotOf(name, root.version, { name, validation_context: { trusted_ca: { inline_bytes: root.data } } }, earliest.notAfter);
}

/** Per-stream state shared by all the resources the stream watches: its credential and, once proven, its lease. */
export class StreamSession {
  private leasePromise: Promise<IdentityLease> | null = null;
  private lease: IdentityLease | null = null;
  private readonly revokeListeners = new Set<(error: SdsError) => void>();
  private closed = false;
  /** Aborted when the stream ends, so that a proof still waiting for its turn is given up. */
  private readonly ended = new AbortController();

  constructor(
    private readonly secrets: WorkloadSecrets,
    private readonly credential: WorkloadCredential | SdsError,
    /** The client connection the stream came on (bounds and fairness of new-token proofs). */
    private readonly connection?: object,
  ) {}

  /** The identity this stream proved, once it has. */
  get identity(): string | null {
    return this.lease?.identity ?? null;
  }

  proveIdentity(): Promise<IdentityLease> {
    if (this.credential instanceof SdsError) return Promise.reject(this.credential);
    const credential = this.credential;
    this.leasePromise ??= this.secrets.acquire(credential, { connection: this.connection, signal: this.ended.signal }).then((lease) => {
      if (this.closed) {
        lease.release();
        throw new SdsError(GrpcStatus.CANCELLED, 'the stream ended');
      }
      this.lease = lease;
      lease.onRevoked((error) => {
        for (const listener of [...this.revokeListeners]) listener(error);
      });
      return lease;
    });
    return this.leasePromise;
  }

  onRevoked(listener: (error: SdsError) => void): void {
    this.revokeListeners.add(listener);
  }

  close(): void {
    this.closed = true;
    this.ended.abort();
    this.revokeListeners.clear();
    this.lease?.release();
    this.lease = null;
  }
}

export interface ResourceProviderOptions {
  secrets: WorkloadSecrets;
  files: FileWatcher;
  mode: AgentMode;
  /** Sidecar mode: the pod's token file, used when a stream carries no token. */
  sidecarCredential: WorkloadCredential | null;
  /** Directories file resources may be read from (enforced by `files`); []: file resources disabled. */
  fileResourceDirs: readonly string[];
  log: Logger;
  /** The clock a token's exp is checked against (epoch ms; default Date.now). */
  clock?: () => number;
  metrics?: AgentMetrics;
  /** The trust domain of this agent's certificates (ALL's first entry, spiffe://<it>). */
  trustDomain: string;
  /** Aliases and federated bundles from the CA; the own trust domain alone when absent. */
  federation?: FederationView;
}

export class ResourceProvider {
  constructor(private readonly options: ResourceProviderOptions) {}

  /**
   * The session for a new stream, from its gRPC metadata and the connection it came on. Everything the agent can
   * check alone (metadata bounds, token shape and exp) is checked here, before any key or CA call is spent on it.
   */
  session(metadata: Metadata, connection?: object): StreamSession {
    const credential = this.credentialFor(metadata);
    // The credential holds the token from here on. grpc-js keeps the call's metadata for the call's life, and the
    // token's bytes there are a slice that pins an 8 KiB Buffer pool slab per stream (~2 KiB a stream at 10,000
    // streams, measured in a heap snapshot); one copy of a bearer token fewer in memory, too.
    metadata.remove(SDS_TOKEN_HEADER);
    metadata.remove('authorization');
    return new StreamSession(this.options.secrets, credential, connection);
  }

  private credentialFor(metadata: Metadata): WorkloadCredential | SdsError {
    const found = tokenFromMetadata(metadata);
    const refused = this.options.metrics?.refusedTokens;
    if (found !== null && 'problem' in found) {
      refused?.inc({ reason: found.code === 'INVALID_ARGUMENT' ? 'metadata_too_large' : 'malformed_token' });
      return new SdsError(GrpcStatus[found.code], `bad workload token: ${found.problem}`);
    }
    if (found !== null) {
      const checked = checkWorkloadToken(found.token, (this.options.clock ?? Date.now)());
      if ('credential' in checked) return checked.credential;
      refused?.inc({ reason: checked.problem.includes(' expired at ') ? 'expired_token' : 'malformed_token' });
      return new SdsError(GrpcStatus.UNAUTHENTICATED, `bad workload token: ${checked.problem}`);
    }
    if (this.options.sidecarCredential) return this.options.sidecarCredential;
    return new SdsError(
      GrpcStatus.UNAUTHENTICATED,
      `no workload token on this SDS stream: send the workload's service-account JWT in gRPC metadata ${SDS_TOKEN_HEADER} ` +
        "(Envoy's file_based_metadata call credential) or as authorization: Bearer <token>",
    );
  }

  /**
   * Starts serving `name` on a stream. Resolves with the first snapshot available; rejects with an SdsError
   * (NOT_FOUND for unknown names and missing files, UNAUTHENTICATED for missing or refused tokens, ...).
   */
  async open(session: StreamSession, name: string): Promise<ResourceWatch> {
    const parsed = parseResourceName(name);
    if (!parsed) throw new SdsError(GrpcStatus.NOT_FOUND, `unknown SDS resource "${name}": this agent serves ${RESOURCE_NAMES_HELP}`);
    const lease = await session.proveIdentity();
    switch (parsed.kind) {
      case 'default':
        return this.openDefault(lease);
      case 'ROOTCA':
        return this.openRoots();
      case 'ALL':
        return this.openAll();
      case 'trust-domain':
        return this.openTrustDomain(name, parsed.trustDomain);
      case 'file-cert':
        return this.openFileCert(name, parsed.certPath, parsed.keyPath);
      case 'file-root':
        return this.openFileRoot(name, parsed.path);
    }
  }

  private openDefault(lease: IdentityLease): ResourceWatch {
    let unsubscribe: (() => void) | null = null;
    return {
      current: () => defaultSnapshot(lease.current()),
      onChange: (listener) => {
        unsubscribe = lease.onChange((secret) => listener(defaultSnapshot(secret)));
      },
      close: () => unsubscribe?.(),
    };
  }

  private openRoots(): ResourceWatch {
    const secrets = this.options.secrets;
    const bundle = secrets.trustBundle();
    // A proven identity implies a CA answer, which carried the bundle.
    if (!bundle) throw new SdsError(GrpcStatus.UNAVAILABLE, 'no trust bundle yet: the CA has not answered');
    let unsubscribe: (() => void) | null = null;
    return {
      current: () => rootSnapshot(secrets.trustBundle() ?? bundle),
      onChange: (listener) => {
        unsubscribe = secrets.onTrustBundle((next) => listener(rootSnapshot(next)));
      },
      close: () => unsubscribe?.(),
    };
  }

  /** Resubscribes `listener` to both the own bundle and the federation set; returns the unsubscribe. */
  private onTrustChange(listener: () => void): () => void {
    const own = this.options.secrets.onTrustBundle(() => listener());
    const federated = this.options.federation?.onChange(() => listener());
    return () => {
      own();
      federated?.();
    };
  }

  private openAll(): ResourceWatch {
    const { secrets, trustDomain, federation } = this.options;
    const first = secrets.trustBundle();
    if (!first) throw new SdsError(GrpcStatus.UNAVAILABLE, 'no trust bundle yet: the CA has not answered');
    const build = (): ResourceSnapshot => allSnapshot(trustDomain, secrets.trustBundle() ?? first, federation?.current() ?? NO_FEDERATION);
    let unsubscribe: (() => void) | null = null;
    return {
      current: build,
      onChange: (listener) => {
        unsubscribe = this.onTrustChange(() => listener(build()));
      },
      close: () => unsubscribe?.(),
    };
  }

  /** The roots that verify peers in `trustDomain`, or null when this agent knows none. */
  private rootsOf(trustDomain: string): TrustDomainRoots | null {
    const own = this.options.secrets.trustBundle();
    const state = this.options.federation?.current() ?? NO_FEDERATION;
    if (trustDomain === this.options.trustDomain || state.aliases.includes(trustDomain)) {
      return own && { key: own, pem: own.pem, version: own.version };
    }
    const bundle = state.federated.find((b) => b.trustDomain === trustDomain);
    return bundle ? { key: bundle, ...bundleText(bundle) } : null;
  }

  private unknownTrustDomain(trustDomain: string): SdsError {
    const state = this.options.federation?.current() ?? NO_FEDERATION;
    const known = [this.options.trustDomain, ...state.aliases, ...state.federated.map((b) => b.trustDomain)];
    return new SdsError(
      GrpcStatus.NOT_FOUND,
      `no trust bundle for trust domain "${trustDomain}": this agent knows ${known.map((td) => `spiffe://${td}`).join(', ')}; ` +
        'a trust domain appears once the CA federates with it (meshca ca --federate-with) and its bundle has reached the agent',
    );
  }

  private openTrustDomain(name: string, trustDomain: string): ResourceWatch {
    const first = this.rootsOf(trustDomain);
    if (!first) {
      if (trustDomain === this.options.trustDomain) throw new SdsError(GrpcStatus.UNAVAILABLE, 'no trust bundle yet: the CA has not answered');
      throw this.unknownTrustDomain(trustDomain);
    }
    let last = trustDomainSnapshot(name, first);
    let unsubscribe: (() => void) | null = null;
    let gone: ((error: SdsError) => void) | null = null;
    return {
      current: () => last,
      onChange: (listener) => {
        unsubscribe = this.onTrustChange(() => {
          const roots = this.rootsOf(trustDomain);
          if (!roots) {
            gone?.(this.unknownTrustDomain(trustDomain));
            return;
          }
          last = trustDomainSnapshot(name, roots);
          listener(last);
        });
      },
      onGone: (listener) => {
        gone = listener;
      },
      close: () => unsubscribe?.(),
    };
  }

  /**
   * The absolute path to watch, or a refusal when no directory is allowed at all. Which files may be read, and
   * how, is the FileWatcher's to enforce (readFileResource), on every read: Kubernetes swaps mounted files by
   * re-pointing a symlink, and each new target is checked again.
   */
  private checkAllowed(file: string): string {
    if (this.options.fileResourceDirs.length === 0) {
      throw new SdsError(
        GrpcStatus.PERMISSION_DENIED,
        this.options.mode === 'node'
          ? 'file resources are disabled in node mode (any workload could read any file the agent can); allow directories with --file-resource-dirs'
          : 'file resources are disabled: --file-resource-dirs (MESHCA_FILE_RESOURCE_DIRS) allows no directory',
      );
    }
    return path.resolve(file);
  }

  private async openFileCert(name: string, certPath: string, keyPath: string): Promise<ResourceWatch> {
    const files = this.options.files;
    const certFile = this.checkAllowed(certPath);
    const keyFile = this.checkAllowed(keyPath);
    const cert = await files.open(certFile);
    let key: FileWatch;
    try {
      key = await files.open(keyFile);
    } catch (error) {
      cert.close();
      throw error;
    }
    return this.combine(name, [cert, key], ([c, k]) => fileCertSnapshot(name, c!, k!));
  }

  private async openFileRoot(name: string, rootPath: string): Promise<ResourceWatch> {
    const rootFile = this.checkAllowed(rootPath);
    const root = await this.options.files.open(rootFile);
    return this.combine(name, [root], ([r]) => fileRootSnapshot(name, r!));
  }

  /** A watch over files: rebuilt on any change; a change that does not validate is logged and not pushed. */
  private combine(name: string, watches: FileWatch[], build: (contents: FileContent[]) => ResourceSnapshot): ResourceWatch {
    const closeAll = (): void => watches.forEach((w) => w.close());
    let current: ResourceSnapshot;
    try {
      current = build(watches.map((w) => w.current()));
    } catch (error) {
      closeAll();
      throw error;
    }
    return {
      current: () => current,
      onChange: (listener) => {
        for (const watch of watches) {
          watch.onChange(() => {
            try {
              const next = build(watches.map((w) => w.current()));
              if (next.version === current.version) return;
              current = next;
              listener(next);
            } catch (error) {
              this.options.log.warn({ resource: name, err: (error as Error).message }, 'changed files do not form a valid secret; keeping the last good one');
            }
          });
        }
      },
      close: closeAll,
    };
  }
}
