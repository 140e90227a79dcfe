/**
 * Vault PKI as the key source (`--ca-source vault`), in one of two modes:
 *  - role mode (VAULT_SIGN_CSR_PATH, e.g. pki_int/sign/istio): every workload CSR, after meshca's own
 *    authentication and policy, is signed by Vault. The returned chain is checked (leaf key = CSR key, URI SAN =
 *    the caller's identity, empty subject, no other SAN, chain verifies to the trust bundle) before it is handed
 *    out. Vault's sign/<role> copies parts of the CSR into the certificate whatever meshca sends: the subject CN
 *    (use_csr_common_name, on by default, wins over `common_name`), the subject serialNumber (unless
 *    `serial_number` is given) and, with use_csr_sans, its SANs. So a CSR asking for any of those is refused
 *    before Vault sees it (a workload could otherwise get a mesh-signed CN=<the CA's host name>), and
 *    sign-verbatim, which copies the whole CSR, is refused as a signing path.
 *  - intermediate mode (VAULT_INTERMEDIATE_PATH, e.g. pki/root/sign-intermediate): meshca keeps its own signing
 *    key, Vault signs an intermediate for it, workloads are signed locally; the intermediate is renewed at 2/3 of
 *    its life and signing carries on with the current one while Vault is unreachable.
 * The trust bundle comes from GET /v1/<mount>/ca_chain (or /ca/pem) and is refreshed periodically.
 */
import { promises as fs } from 'node:fs';
import { children, decodeOid, expectTag, readSingle, Tag } from '../../../pki/der.js';
import { OID } from '../../../pki/oids.js';
import * as path from 'node:path';
import type { Logger } from '../../../log.js';
import { readDuration, readOptionalString, readString, ConfigError, type Env } from '../../../config/env.js';
import { sourceOf, type EnvOnlySpec, type FlagSpec } from '../../../config/flags.js';
import {
  certificatesFromPem,
  certificateToPem,
  createCsr,
  exportPrivateKeyPem,
  generateKeyPairForAsync,
  isPkiError,
  parseCertificate,
  parseCsr,
  signatureVerifies,
  verifyChain,
  type KeySpec,
  type ParsedCertificate,
} from '../../../pki/index.js';
import { ensurePrivateDirectory, writeFileAtomic } from '../../../util/fs.js';
import { MAX_TIMER_MS } from '../../../util/timers.js';
import { ISTIO_CACERTS_FILES, loadCacerts } from '../cacerts/cacerts.js';
import { CaConfigError, CaError } from '../../errors.js';
import { ManagedLocalSigner } from '../../managed-signer.js';
import { buildCaMaterial, dedupeCertificates, fingerprint, type CaMaterial } from '../../material.js';
import type { SignedChain, SignerStatus, WorkloadSignRequest, WorkloadSigner } from '../../signer.js';
import { VaultRequestError, VaultSession, toVaultError, type VaultAuthConfig } from './vault-client.js';

export const DEFAULT_VAULT_JWT_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/token';
export const DEFAULT_VAULT_AUTH_PATH = 'auth/kubernetes/login';

/** The Vault source's settings: Istio's VAULT_* names where Istio has them, MESHCA_VAULT_* for meshca's own. */
export const VAULT_FLAGS = {
  vaultAddr: { flags: '--vault-addr <url>', description: 'Vault server URL, e.g. https://vault.vault.svc:8200', env: ['VAULT_ADDR'] },
  vaultTlsRootCert: { flags: '--vault-tls-root-cert <file>', description: "PEM file of the roots that verify Vault's TLS", env: ['VAULT_TLS_ROOT_CERT'] },
  vaultNamespace: { flags: '--vault-namespace <namespace>', description: 'Vault Enterprise namespace', env: ['VAULT_NAMESPACE'] },
  vaultSignCsrPath: { flags: '--vault-sign-csr-path <path>', description: 'role mode: PKI path that signs every workload CSR, e.g. pki_int/sign/istio', env: ['VAULT_SIGN_CSR_PATH'] },
  vaultIntermediatePath: {
    flags: '--vault-intermediate-path <path>',
    description: 'intermediate mode: PKI path that signs our intermediate, e.g. pki/root/sign-intermediate',
    env: ['VAULT_INTERMEDIATE_PATH'],
  },
  vaultRole: { flags: '--vault-role <role>', description: 'role for Vault Kubernetes auth (instead of a token)', env: ['VAULT_ROLE'] },
  vaultAuthPath: { flags: '--vault-auth-path <path>', description: 'Kubernetes auth login path', env: ['VAULT_AUTH_PATH'], defaultText: DEFAULT_VAULT_AUTH_PATH },
  vaultJwtFile: {
    flags: '--vault-jwt-file <file>',
    description: 'service-account JWT for Vault Kubernetes auth (--vault-role)',
    env: ['MESHCA_VAULT_JWT_FILE'],
    defaultText: DEFAULT_VAULT_JWT_FILE,
  },
  vaultTokenFile: { flags: '--vault-token-file <file>', description: 'file holding the Vault token, re-read after a 403 (instead of VAULT_TOKEN)', env: ['MESHCA_VAULT_TOKEN_FILE'] },
  vaultIntermediateTtl: {
    flags: '--vault-intermediate-ttl <duration>',
    description: 'lifetime requested for the Vault-signed intermediate; renewed at 2/3',
    env: ['MESHCA_VAULT_INTERMEDIATE_TTL'],
    defaultText: '720h',
  },
  vaultBundleRefresh: { flags: '--vault-bundle-refresh <duration>', description: 'how often the trust bundle is re-read from Vault', env: ['MESHCA_VAULT_BUNDLE_REFRESH'], defaultText: '5m' },
  vaultCaChainPath: {
    flags: '--vault-ca-chain-path <path>',
    description: 'Vault path of the CA chain',
    env: ['MESHCA_VAULT_CA_CHAIN_PATH'],
    defaultText: '<mount of the signing path>/ca_chain',
  },
} as const satisfies Record<string, FlagSpec>;

/** The token has no flag on purpose: a command line is visible to every local user (ps); use --vault-token-file. */
export const VAULT_ENV_ONLY: readonly EnvOnlySpec[] = [{ env: 'VAULT_TOKEN', description: 'vault: token (or --vault-token-file, or --vault-role for Kubernetes auth)' }];

const V = VAULT_FLAGS;

export interface VaultFlags {
  vaultAddr?: string;
  vaultTlsRootCert?: string;
  vaultNamespace?: string;
  vaultSignCsrPath?: string;
  vaultIntermediatePath?: string;
  vaultRole?: string;
  vaultAuthPath?: string;
  vaultJwtFile?: string;
  vaultTokenFile?: string;
  vaultIntermediateTtl?: string;
  vaultBundleRefresh?: string;
  vaultCaChainPath?: string;
}

export interface VaultConfig {
  addr: string;
  namespace?: string;
  tlsRootCertFile?: string;
  auth: VaultAuthConfig;
  mode: 'role' | 'intermediate';
  /** VAULT_SIGN_CSR_PATH or VAULT_INTERMEDIATE_PATH. */
  path: string;
  /** Where the trust bundle is read: `<mount>/ca_chain`. */
  caChainPath: string;
  intermediateTtlSeconds: number;
  bundleRefreshSeconds: number;
  timeoutSeconds: number;
}

/** `pki_int/sign/istio` → `pki_int`; `pki/root/sign-intermediate` → `pki`; `pki/issuer/x/sign/r` → `pki`. */
export function pkiMountOf(vaultPath: string): string | null {
  const trimmed = vaultPath.trim().replace(/^\/+|\/+$/g, '').replace(/^v1\//, '');
  const match =
    /^(.+?)\/(?:issuer\/[^/]+\/)?(?:sign|sign-verbatim)(?:\/[^/]+)?$/.exec(trimmed) ??
    /^(.+?)\/(?:root\/|issuer\/[^/]+\/)sign-intermediate$/.exec(trimmed);
  return match ? match[1]! : null;
}

/** Reads the Vault settings (Istio's VAULT_* names). Throws ConfigError naming the variable. */
export function readVaultConfig(flags: VaultFlags, env: Env): VaultConfig {
  const addr = readOptionalString(flags.vaultAddr, env, sourceOf(V.vaultAddr));
  if (!addr) throw new ConfigError('--ca-source vault needs VAULT_ADDR, e.g. VAULT_ADDR=https://vault.vault.svc:8200');
  let url: URL;
  try {
    url = new URL(addr);
  } catch {
    throw new ConfigError(`invalid VAULT_ADDR="${addr}": expected a URL such as https://vault.vault.svc:8200`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new ConfigError(`invalid VAULT_ADDR="${addr}": expected an http:// or https:// URL`);
  }
  const signPath = readOptionalString(flags.vaultSignCsrPath, env, sourceOf(V.vaultSignCsrPath));
  const intermediatePath = readOptionalString(flags.vaultIntermediatePath, env, sourceOf(V.vaultIntermediatePath));
  if (signPath && intermediatePath) {
    throw new ConfigError('set only one of VAULT_SIGN_CSR_PATH (Vault signs every workload) and VAULT_INTERMEDIATE_PATH (Vault signs meshca an intermediate)');
  }
  if (!signPath && !intermediatePath) {
    throw new ConfigError(
      '--ca-source vault needs VAULT_SIGN_CSR_PATH (e.g. pki_int/sign/istio: Vault signs every workload) or VAULT_INTERMEDIATE_PATH (e.g. pki/root/sign-intermediate: Vault signs meshca an intermediate)',
    );
  }
  const mode = signPath ? 'role' : 'intermediate';
  const vaultPath = (signPath ?? intermediatePath)!.replace(/^\/+/, '');
  if (signPath && /(^|\/)sign-verbatim(\/|$)/.test(vaultPath)) {
    throw new ConfigError(
      `invalid VAULT_SIGN_CSR_PATH="${vaultPath}": sign-verbatim copies the workload's CSR (subject and SANs) into the certificate; use <mount>/sign/<role>, e.g. pki_int/sign/istio`,
    );
  }
  let caChainPath = readOptionalString(flags.vaultCaChainPath, env, sourceOf(V.vaultCaChainPath));
  if (!caChainPath) {
    const mount = pkiMountOf(vaultPath);
    if (!mount) {
      throw new ConfigError(
        `cannot tell the PKI mount from ${signPath ? 'VAULT_SIGN_CSR_PATH' : 'VAULT_INTERMEDIATE_PATH'}="${vaultPath}" (expected <mount>/sign/<role> or <mount>/root/sign-intermediate); set --vault-ca-chain-path`,
      );
    }
    caChainPath = `${mount}/ca_chain`;
  }
  const token = readOptionalString(undefined, env, { env: 'VAULT_TOKEN' });
  const tokenFile = readOptionalString(flags.vaultTokenFile, env, sourceOf(V.vaultTokenFile));
  const role = readOptionalString(flags.vaultRole, env, sourceOf(V.vaultRole));
  let auth: VaultAuthConfig;
  if ((token || tokenFile) && role) {
    throw new ConfigError('set either VAULT_TOKEN (or --vault-token-file) or VAULT_ROLE (Kubernetes auth), not both');
  } else if (token || tokenFile) {
    auth = { kind: 'token', ...(token ? { token } : {}), ...(tokenFile ? { tokenFile } : {}) };
  } else if (role) {
    const authPath = readString(flags.vaultAuthPath, env, sourceOf(V.vaultAuthPath), DEFAULT_VAULT_AUTH_PATH).replace(/^\/+/, '');
    if (!/^auth\/.+\/login\/?$/.test(authPath)) throw new ConfigError(`invalid VAULT_AUTH_PATH="${authPath}": expected auth/<mount>/login, e.g. auth/kubernetes/login`);
    auth = { kind: 'kubernetes', authPath, role, jwtFile: readString(flags.vaultJwtFile, env, sourceOf(V.vaultJwtFile), DEFAULT_VAULT_JWT_FILE) };
  } else {
    throw new ConfigError('--ca-source vault needs credentials: VAULT_TOKEN (or --vault-token-file), or VAULT_ROLE for Kubernetes auth');
  }
  const namespace = readOptionalString(flags.vaultNamespace, env, sourceOf(V.vaultNamespace));
  const tlsRootCertFile = readOptionalString(flags.vaultTlsRootCert, env, sourceOf(V.vaultTlsRootCert));
  return {
    addr: addr.replace(/\/+$/, ''),
    ...(namespace ? { namespace } : {}),
    ...(tlsRootCertFile ? { tlsRootCertFile } : {}),
    auth,
    mode,
    path: vaultPath,
    caChainPath: caChainPath.replace(/^\/+/, ''),
    intermediateTtlSeconds: readDuration(flags.vaultIntermediateTtl, env, sourceOf(V.vaultIntermediateTtl), 720 * 3600, { min: 10 }),
    bundleRefreshSeconds: readDuration(flags.vaultBundleRefresh, env, sourceOf(V.vaultBundleRefresh), 300, { min: 1 }),
    timeoutSeconds: 10,
  };
}

/**
 * Refuses (CSR_ERROR, so INVALID_ARGUMENT) a workload CSR that names anything Vault's sign/<role> copies into the
 * certificate regardless of the request body: a subject CN or serialNumber, or a DNS, email or IP SAN. Other subject
 * attributes (Istio's agents send an empty O) are ignored by Vault and allowed; what Vault returns is checked anyway.
 */
function refuseCsrNamesVaultCopies(csrPem: string, grantedDnsNames: readonly string[]): void {
  let csr: ReturnType<typeof parseCsr>;
  const copied: string[] = [];
  try {
    csr = parseCsr(csrPem);
    const subject = children(expectTag(readSingle(csr.info, 'CertificationRequestInfo'), Tag.SEQUENCE, 'CertificationRequestInfo'))[1]!;
    for (const rdn of children(subject)) {
      for (const attribute of children(rdn)) {
        const type = decodeOid(expectTag(children(attribute)[0], Tag.OID, 'attribute type').contents);
        if (type === OID.commonName) copied.push('a subject CN (use_csr_common_name)');
        else if (type === SERIAL_NUMBER_ATTRIBUTE) copied.push('a subject serialNumber');
      }
    }
  } catch (error) {
    throw new CaError('CSR_ERROR', `CSR error: ${(error as Error).message}`, { cause: error });
  }
  // The CA's own serving certificate (dnsNames granted by configuration) is the only request with DNS SANs.
  if (csr.sans.dnsNames.some((name) => !grantedDnsNames.includes(name))) copied.push('DNS SANs');
  if (csr.sans.emails.length > 0) copied.push('email SANs');
  if (csr.sans.ipAddresses.length > 0) copied.push('IP SANs');
  if (copied.length > 0) {
    throw new CaError(
      'CSR_ERROR',
      `CSR error: the CSR names ${[...new Set(copied)].join(', ')}, which Vault would copy into the certificate; with Vault as the key source send a CSR with no CN or serialNumber in the subject and only the URI SAN`,
    );
  }
}

/** X.520 serialNumber, which Vault's sign/<role> copies from the CSR's subject unless `serial_number` is given. */
const SERIAL_NUMBER_ATTRIBUTE = '2.5.4.5';

function isSelfSigned(cert: ParsedCertificate): boolean {
  return cert.subjectDer.equals(cert.issuerDer) && signatureVerifies(cert, cert);
}

function parsePemList(values: unknown): ParsedCertificate[] {
  const texts = Array.isArray(values) ? values.map(String) : typeof values === 'string' ? [values] : [];
  return texts.flatMap((t) => certificatesFromPem(t).map(parseCertificate));
}

export interface VaultTrustBundle {
  /** Trust anchors: the self-signed certificates of the chain, or its top when Vault does not return the root. */
  roots: ParsedCertificate[];
  /** Everything Vault returned (issuer first). */
  chain: ParsedCertificate[];
}

/** GET /v1/<mount>/ca_chain, falling back to /v1/<mount>/ca/pem. */
export async function fetchVaultTrustBundle(session: VaultSession, caChainPath: string): Promise<VaultTrustBundle> {
  const extract = (body: unknown): ParsedCertificate[] => {
    if (typeof body === 'string') return certificatesFromPem(body).map(parseCertificate);
    const data = (body as { data?: { ca_chain?: unknown; certificate?: unknown } } | null)?.data;
    return dedupeCertificates([...parsePemList(data?.ca_chain), ...parsePemList(data?.certificate)]);
  };
  let chain = extract(await session.read(caChainPath));
  if (chain.length === 0) {
    const pemPath = caChainPath.replace(/ca_chain$/, 'ca/pem');
    if (pemPath !== caChainPath) chain = extract(await session.read(pemPath));
  }
  if (chain.length === 0) throw new VaultRequestError(caChainPath, 204, [], `Vault returned no CA certificate at ${caChainPath}`);
  const selfSigned = chain.filter(isSelfSigned);
  return { roots: selfSigned.length > 0 ? selfSigned : [chain[chain.length - 1]!], chain };
}

interface SignResponseData {
  certificate?: unknown;
  issuing_ca?: unknown;
  ca_chain?: unknown;
}

function signResponseData(response: unknown, vaultPath: string): { leafAndRest: ParsedCertificate[]; parents: ParsedCertificate[] } {
  const data = (response as { data?: SignResponseData } | null)?.data;
  let leafAndRest: ParsedCertificate[];
  let parents: ParsedCertificate[];
  try {
    leafAndRest = parsePemList(data?.certificate);
    parents = dedupeCertificates([...parsePemList(data?.ca_chain), ...parsePemList(data?.issuing_ca)]);
  } catch (error) {
    throw new VaultRequestError(vaultPath, 200, [], `Vault's response at ${vaultPath} holds an unreadable certificate: ${(error as Error).message}`);
  }
  if (leafAndRest.length === 0) throw new VaultRequestError(vaultPath, 200, [], `Vault's response at ${vaultPath} holds no certificate (was format=pem honoured?)`);
  return { leafAndRest, parents };
}

/** Maps a Vault failure on a workload signing call to the CA's error codes (and so to gRPC statuses). */
function signingError(error: unknown, vaultPath: string): CaError {
  const failure = toVaultError(error, vaultPath);
  if (failure.unavailable) return new CaError('UPSTREAM_UNAVAILABLE', `Vault is unavailable: ${failure.message}`, { cause: error });
  if (failure.status === 403) return new CaError('UPSTREAM_DENIED', `Vault denied the signing request: ${failure.message}`, { cause: error });
  return new CaError('UPSTREAM_REJECTED', `Vault refused to sign: ${failure.message}`, { cause: error });
}

interface BackgroundOptions {
  logger: Logger;
  now?: () => number;
}

/** Role mode: a remote signer. */
export class VaultRoleSigner implements WorkloadSigner {
  readonly source = 'vault';
  private bundle: VaultTrustBundle;
  private bundlePem: string;
  private readonly listeners = new Set<() => void>();
  private refreshTimer: NodeJS.Timeout | undefined;
  private refreshing: Promise<boolean> | undefined;

  private constructor(
    private readonly session: VaultSession,
    private readonly config: VaultConfig,
    bundle: VaultTrustBundle,
    private readonly options: BackgroundOptions,
  ) {
    this.bundle = bundle;
    this.bundlePem = bundle.roots.map((r) => certificateToPem(r.der)).join('');
  }

  static async open(session: VaultSession, config: VaultConfig, options: BackgroundOptions): Promise<VaultRoleSigner> {
    let bundle: VaultTrustBundle;
    try {
      bundle = await fetchVaultTrustBundle(session, config.caChainPath);
    } catch (error) {
      const failure = toVaultError(error, config.caChainPath);
      throw new CaConfigError(`cannot read the trust bundle from Vault at ${config.addr}/v1/${config.caChainPath}: ${failure.message}`, { cause: error });
    }
    const signer = new VaultRoleSigner(session, config, bundle, options);
    signer.refreshTimer = setInterval(() => void signer.refreshBundle().catch(() => undefined), config.bundleRefreshSeconds * 1000);
    signer.refreshTimer.unref();
    options.logger.info(
      { source: 'vault', mode: 'role', vault: config.addr, signPath: config.path, roots: bundle.roots.map(fingerprint) },
      'Vault signs workload certificates (role mode)',
    );
    return signer;
  }

  /** Re-reads the bundle; resolves true when it changed. Failures keep the current bundle. */
  refreshBundle(): Promise<boolean> {
    if (!this.refreshing) {
      this.refreshing = (async () => {
        try {
          const bundle = await fetchVaultTrustBundle(this.session, this.config.caChainPath);
          const pem = bundle.roots.map((r) => certificateToPem(r.der)).join('');
          this.bundle = bundle;
          if (pem === this.bundlePem) return false;
          this.bundlePem = pem;
          this.options.logger.info({ roots: bundle.roots.map(fingerprint) }, 'the Vault trust bundle changed');
          for (const listener of this.listeners) listener();
          return true;
        } catch (error) {
          this.options.logger.warn({ err: toVaultError(error, this.config.caChainPath).message }, 'cannot refresh the trust bundle from Vault; keeping the current one');
          throw error;
        }
      })().finally(() => {
        this.refreshing = undefined;
      });
    }
    return this.refreshing;
  }

  async sign(request: WorkloadSignRequest): Promise<SignedChain> {
    refuseCsrNamesVaultCopies(request.csrPem, request.dnsNames ?? []);
    const body: Record<string, unknown> = {
      csr: request.csrPem,
      format: 'pem',
      exclude_cn_from_sans: true,
      ttl: `${Math.max(1, Math.floor(request.ttlSeconds))}s`,
    };
    if (request.uris.length > 0) body.uri_sans = request.uris.join(',');
    if (request.dnsNames && request.dnsNames.length > 0) body.alt_names = request.dnsNames.join(',');
    let response: unknown;
    try {
      response = await this.session.write(this.config.path, body);
    } catch (error) {
      throw signingError(error, this.config.path);
    }
    let parsed;
    try {
      parsed = signResponseData(response, this.config.path);
    } catch (error) {
      throw new CaError('CERT_GEN_ERROR', (error as Error).message, { cause: error });
    }
    const leaf = parsed.leafAndRest[0]!;
    this.checkLeaf(leaf, request);
    const intermediates = dedupeCertificates([...parsed.leafAndRest.slice(1), ...parsed.parents]).filter((c) => !c.der.equals(leaf.der));
    let verified = this.verify(leaf, intermediates);
    if (!verified.path) {
      // Vault may have moved to a new root since the last refresh: look once more before refusing.
      await this.refreshBundle().catch(() => false);
      verified = this.verify(leaf, intermediates);
    }
    if (!verified.path) {
      this.options.logger.error({ signPath: this.config.path, err: verified.error }, 'Vault returned a chain that does not verify against the trust bundle; not handing it out');
      throw new CaError('CERT_GEN_ERROR', `Vault returned a certificate chain that does not verify against the trust bundle: ${verified.error}`);
    }
    const middle = verified.path.slice(1, -1).map((c) => certificateToPem(c.der));
    return {
      chain: [certificateToPem(leaf.der), ...middle, this.bundlePem],
      leafDer: leaf.der,
      serialHex: leaf.serialHex,
      notAfter: leaf.notAfter,
    };
  }

  /** Fail closed: Vault must have certified exactly the key and identities meshca asked for. */
  private checkLeaf(leaf: ParsedCertificate, request: WorkloadSignRequest): void {
    if (!leaf.spkiDer.equals(request.spkiDer)) {
      throw new CaError('CERT_GEN_ERROR', 'Vault returned a certificate for a different public key than the CSR');
    }
    if (leaf.basicConstraints?.ca === true) throw new CaError('CERT_GEN_ERROR', 'Vault returned a CA certificate for a workload CSR');
    if (leaf.subject !== '' || leaf.subjectDer.length !== 2) {
      throw new CaError(
        'CERT_GEN_ERROR',
        `Vault issued a certificate with the subject "${leaf.subject}"; workload certificates carry an empty subject: clear the Vault role's subject fields (organization, ou, country, locality, province, street_address, postal_code)`,
      );
    }
    const granted = request.dnsNames ?? [];
    const others = [...leaf.sans.dnsNames.filter((n) => !granted.includes(n)).map((n) => `DNS:${n}`), ...leaf.sans.emails.map((n) => `email:${n}`), ...leaf.sans.ipAddresses.map((n) => `IP:${n}`)];
    if (others.length > 0) {
      throw new CaError('CERT_GEN_ERROR', `Vault issued SANs meshca did not ask for (${others.join(', ')}); configure the Vault role with use_csr_sans=false`);
    }
    const want = [...request.uris].sort();
    const got = [...leaf.sans.uris].sort();
    if (want.length !== got.length || want.some((u, i) => u !== got[i])) {
      throw new CaError(
        'CERT_GEN_ERROR',
        `Vault issued URI SANs [${got.join(', ')}] but the caller is [${want.join(', ')}]; configure the Vault role so that uri_sans is honoured (use_csr_sans=false) and allowed`,
      );
    }
  }

  private verify(leaf: ParsedCertificate, intermediates: ParsedCertificate[]): { path?: ParsedCertificate[]; error?: string } {
    try {
      // The leaf's signature is verified once, by the final check of every issued chain (CertificateAuthority).
      return { path: verifyChain(leaf, { intermediates, roots: this.bundle.roots, leafSignatureVerifiedElsewhere: true }) };
    } catch (error) {
      return { error: (error as Error).message };
    }
  }

  trustBundlePem(): string {
    return this.bundlePem;
  }

  maxNotAfter(): Date | null {
    return null;
  }

  status(): SignerStatus {
    return {
      source: 'vault',
      mode: 'role',
      roots: this.bundle.roots.map((r) => ({ subject: r.subject, fingerprintSha256: fingerprint(r), notAfter: r.notAfter })),
    };
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    if (this.refreshTimer) clearInterval(this.refreshTimer);
    this.listeners.clear();
    this.session.close();
  }
}

export interface VaultIntermediateOptions extends BackgroundOptions {
  keySpec: KeySpec;
  trustDomain: string;
  /** Where the current intermediate is kept (Istio cacerts layout), so a restart does not need Vault. */
  stateDir: string;
}

/** Intermediate mode: local signing with an intermediate that Vault signs and meshca renews. */
export class VaultIntermediateSource {
  private renewTimer: NodeJS.Timeout | undefined;
  private refreshTimer: NodeJS.Timeout | undefined;
  private renewing: Promise<void> | undefined;
  private closed = false;
  private signer: ManagedLocalSigner | undefined;
  private bundle: VaultTrustBundle | undefined;
  private failures = 0;
  /** When the current intermediate was obtained (the file time for one kept on disk). */
  private obtainedAt = 0;

  constructor(
    private readonly session: VaultSession,
    private readonly config: VaultConfig,
    private readonly options: VaultIntermediateOptions,
  ) {}

  private now(): number {
    return this.options.now?.() ?? Date.now();
  }

  get directory(): string {
    return path.join(this.options.stateDir, 'vault-intermediate');
  }

  /**
   * When the intermediate should be replaced: at 2/3 of its lifetime, counted from when meshca obtained it
   * (Vault backdates notBefore by not_before_duration, 30 s by default, which is not lifetime).
   */
  static renewAt(cert: ParsedCertificate, obtainedAt: number): number {
    const start = Math.min(Math.max(cert.notBefore.getTime(), obtainedAt), cert.notAfter.getTime());
    return start + ((cert.notAfter.getTime() - start) * 2) / 3;
  }

  /** Loads the kept intermediate or gets a new one from Vault; throws CaConfigError when neither works. */
  async open(): Promise<ManagedLocalSigner> {
    let material = await this.loadKept();
    if (!material || this.now() >= VaultIntermediateSource.renewAt(material.signingCert, this.obtainedAt)) {
      try {
        material = await this.requestIntermediate();
      } catch (error) {
        const failure = toVaultError(error, this.config.path);
        if (!material || material.signingCert.notAfter.getTime() <= this.now()) {
          throw new CaConfigError(`cannot get an intermediate CA certificate from Vault at ${this.config.addr}/v1/${this.config.path}: ${failure.message}`, { cause: error });
        }
        this.options.logger.warn({ err: failure.message }, 'Vault is unavailable; signing with the kept intermediate until it can be renewed');
      }
    }
    const signer = new ManagedLocalSigner('vault', material, 'intermediate');
    this.signer = signer;
    this.options.logger.info(
      {
        source: 'vault',
        mode: 'intermediate',
        vault: this.config.addr,
        intermediate: material.signingCert.serialHex,
        notAfter: material.signingCert.notAfter.toISOString(),
        renewAt: new Date(VaultIntermediateSource.renewAt(material.signingCert, this.obtainedAt)).toISOString(),
        roots: material.roots.map(fingerprint),
      },
      'signing workloads with an intermediate CA signed by Vault (intermediate mode)',
    );
    this.armRenewal();
    this.refreshTimer = setInterval(() => void this.refreshBundle(), this.config.bundleRefreshSeconds * 1000);
    this.refreshTimer.unref();
    signer.addCleanup(() => this.close());
    return signer;
  }

  private async loadKept(): Promise<CaMaterial | undefined> {
    try {
      const { material } = await loadCacerts(this.directory, new Date(this.now()));
      this.obtainedAt = (await fs.stat(path.join(this.directory, ISTIO_CACERTS_FILES.cert))).mtimeMs;
      return material;
    } catch {
      // Nothing kept (first start), or unusable: a new intermediate is requested.
      return undefined;
    }
  }

  private async requestIntermediate(): Promise<CaMaterial> {
    const keys = await generateKeyPairForAsync(this.options.keySpec);
    const csrPem = createCsr({ privateKey: keys.privateKey, requestCa: true });
    const response = await this.session.write(this.config.path, {
      csr: csrPem,
      common_name: `meshca intermediate CA (${this.options.trustDomain})`,
      ttl: `${Math.floor(this.config.intermediateTtlSeconds)}s`,
      format: 'pem',
      exclude_cn_from_sans: true,
      max_path_length: 0,
    });
    const { leafAndRest, parents } = signResponseData(response, this.config.path);
    const intermediate = leafAndRest[0]!;
    const chain = dedupeCertificates([...leafAndRest.slice(1), ...parents]).filter((c) => !c.der.equals(intermediate.der));
    const fetched = await fetchVaultTrustBundle(this.session, this.config.caChainPath).catch(() => undefined);
    if (fetched) this.bundle = fetched;
    const roots = dedupeCertificates([...chain.filter(isSelfSigned), ...(this.bundle?.roots ?? [])]);
    if (roots.length === 0 && chain.length > 0) roots.push(chain[chain.length - 1]!);
    let material: CaMaterial;
    try {
      material = buildCaMaterial({ signingCert: intermediate, privateKey: keys.privateKey, chain, roots, now: new Date(this.now()) });
    } catch (error) {
      const detail = isPkiError(error) ? error.message : String(error);
      throw new VaultRequestError(this.config.path, 200, [], `the intermediate Vault signed is unusable: ${detail}`);
    }
    this.obtainedAt = this.now();
    await this.keep(material, exportPrivateKeyPem(keys.privateKey));
    return material;
  }

  /** Writes the Istio cacerts layout; the key goes first and is 0600. */
  private async keep(material: CaMaterial, keyPem: string): Promise<void> {
    const dir = this.directory;
    try {
      await ensurePrivateDirectory(dir);
      await writeFileAtomic(path.join(dir, ISTIO_CACERTS_FILES.key), keyPem, 0o600);
      await writeFileAtomic(path.join(dir, ISTIO_CACERTS_FILES.cert), certificateToPem(material.signingCert.der), 0o644);
      await writeFileAtomic(path.join(dir, ISTIO_CACERTS_FILES.chain), [...material.chainPems, material.rootsPem].join(''), 0o644);
      await writeFileAtomic(path.join(dir, ISTIO_CACERTS_FILES.roots), material.rootsPem, 0o644);
    } catch (error) {
      // Not fatal: signing works from memory; only a restart while Vault is down would need the files.
      this.options.logger.warn({ dir, err: (error as Error).message }, 'cannot keep the Vault intermediate on disk');
      await fs.rm(path.join(dir, ISTIO_CACERTS_FILES.key), { force: true }).catch(() => undefined);
    }
  }

  private armRenewal(delayOverrideMs?: number): void {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    if (this.closed || !this.signer) return;
    const at = VaultIntermediateSource.renewAt(this.signer.current().signingCert, this.obtainedAt);
    // At least a second between renewals, even when Vault hands out an intermediate that is nearly expired.
    const delay = delayOverrideMs ?? Math.max(1000, at - this.now());
    this.renewTimer = setTimeout(() => {
      if (delayOverrideMs === undefined && at - this.now() > 1000) this.armRenewal();
      else void this.renew();
    }, Math.min(delay, MAX_TIMER_MS));
    this.renewTimer.unref();
  }

  /** Replaces the intermediate; on failure the current one keeps signing and a retry is scheduled. */
  renew(): Promise<void> {
    if (!this.renewing) {
      this.renewing = (async () => {
        try {
          const material = await this.requestIntermediate();
          if (this.closed) return;
          this.signer?.replace(material);
          this.failures = 0;
          this.options.logger.info(
            { intermediate: material.signingCert.serialHex, notAfter: material.signingCert.notAfter.toISOString() },
            'renewed the intermediate CA certificate from Vault',
          );
          this.armRenewal();
        } catch (error) {
          this.failures++;
          const current = this.signer?.current().signingCert;
          const left = current ? current.notAfter.getTime() - this.now() : 0;
          const retryMs = Math.max(1000, Math.min(60_000, left / 10, 1000 * 2 ** Math.min(this.failures, 6)));
          this.options.logger.warn(
            { err: toVaultError(error, this.config.path).message, retryInMs: Math.round(retryMs), currentNotAfter: current?.notAfter.toISOString() },
            'cannot renew the intermediate CA certificate from Vault; the current one keeps signing',
          );
          this.armRenewal(retryMs);
        }
      })().finally(() => {
        this.renewing = undefined;
      });
    }
    return this.renewing;
  }

  /** Adds roots Vault now publishes (e.g. after a Vault root rotation) to the bundle. */
  private async refreshBundle(): Promise<void> {
    if (!this.signer || this.closed) return;
    let fetched: VaultTrustBundle;
    try {
      fetched = await fetchVaultTrustBundle(this.session, this.config.caChainPath);
    } catch (error) {
      this.options.logger.warn({ err: toVaultError(error, this.config.caChainPath).message }, 'cannot refresh the trust bundle from Vault; keeping the current one');
      return;
    }
    this.bundle = fetched;
    const current = this.signer.current();
    const ownRoot = current.chain.length > 0 ? [] : [current.signingCert];
    const anchor = current.roots.filter((r) => verifiesUnder(current, r));
    const roots = dedupeCertificates([...fetched.roots, ...anchor, ...ownRoot]).filter((r) => r.notAfter.getTime() > this.now());
    const pem = roots.map((r) => certificateToPem(r.der)).join('');
    if (pem === current.rootsPem) return;
    try {
      this.signer.replace(buildCaMaterial({ signingCert: current.signingCert, privateKey: current.privateKey, chain: current.chain.slice(1), roots, now: new Date(this.now()) }));
      this.options.logger.info({ roots: roots.map(fingerprint) }, 'the Vault trust bundle changed');
    } catch (error) {
      this.options.logger.warn({ err: (error as Error).message }, 'the new Vault trust bundle does not fit the current intermediate; keeping the current bundle');
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.renewTimer) clearTimeout(this.renewTimer);
    if (this.refreshTimer) clearInterval(this.refreshTimer);
    await this.renewing?.catch(() => undefined);
    this.session.close();
  }
}

/** True when `root` anchors the material's signing chain. */
function verifiesUnder(material: CaMaterial, root: ParsedCertificate): boolean {
  try {
    verifyChain(material.signingCert, { intermediates: material.chain.slice(1), roots: [root] });
    return true;
  } catch {
    return false;
  }
}

/** Opens the Vault key source in the configured mode. Throws CaConfigError / ConfigError with one line. */
export async function openVaultSigner(config: VaultConfig, options: VaultIntermediateOptions): Promise<WorkloadSigner> {
  const session = await VaultSession.open({
    addr: config.addr,
    ...(config.namespace ? { namespace: config.namespace } : {}),
    ...(config.tlsRootCertFile ? { tlsRootCertFile: config.tlsRootCertFile } : {}),
    auth: config.auth,
    timeoutMs: config.timeoutSeconds * 1000,
    logger: options.logger,
  });
  try {
    if (config.mode === 'role') return await VaultRoleSigner.open(session, config, options);
    return await new VaultIntermediateSource(session, config, options).open();
  } catch (error) {
    session.close();
    throw error;
  }
}
