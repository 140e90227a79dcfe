/**
 * An SDS client that behaves like Envoy: one StreamSecrets stream per secret name, the node on the first
 * request, an ACK (version + nonce) after every response it applies, a NACK (error_detail, last good version)
 * after one it cannot use, responses of other types ignored, and reconnects with backoff when the stream fails.
 * Used by `meshca fetch` and by the tests.
 */
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  certificatesFromPem,
  certificatePublicKey,
  loadPrivateKey,
  parseCertificate,
  spkiDer,
} from '../pki/index.js';
import {
  SdsClient,
  SECRET_TYPE_URL,
  SPIFFE_VALIDATOR_NAME,
  decodeSecretAny,
  decodeSpiffeValidatorAny,
  type DataSource,
  type DiscoveryRequest,
  type DiscoveryResponse,
  type Init,
  type SecretMessage,
} from '../wire/protos.js';
import { backoffDelayMs } from './backoff.js';
import { SDS_TOKEN_HEADER } from './credentials.js';

/** Envoy reports every rejected update with code INTERNAL. */
const NACK_CODE = grpc.status.INTERNAL;

export function connectSds(socketPath: string): SdsClient {
  // Envoy's reconnect backoff (500 ms base, 30 s max) rather than grpc-js's (1 s, 120 s): a restarted agent is
  // found again about as fast as Envoy would find it.
  return new SdsClient(`unix:${path.resolve(socketPath)}`, grpc.credentials.createInsecure(), {
    'grpc.initial_reconnect_backoff_ms': 500,
    'grpc.max_reconnect_backoff_ms': 30_000,
  });
}

/** The metadata Envoy's file_based_metadata credential sends: the token as binary header. */
export function workloadTokenMetadata(token: string | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (token !== undefined) metadata.set(SDS_TOKEN_HEADER, Buffer.from(token));
  return metadata;
}

export interface SecretUpdate {
  name: string;
  versionInfo: string;
  nonce: string;
  secret: SecretMessage;
  /** PEM texts, when the secret carries them. */
  certificateChain?: string;
  privateKey?: string;
  trustedCa?: string;
  /** A SPIFFE certificate validator (SDS `ALL`): each trust domain and its roots, PEM. */
  trustDomains?: { name: string; pem: string }[];
}

export interface SecretWatchOptions {
  name: string;
  /** Built for each (re)connection, so a token file can be re-read. */
  metadata: () => grpc.Metadata;
  nodeId?: string;
  /** Reconnect after a stream error, as Envoy does (default true). */
  reconnect?: boolean;
  /** Extra validation: return a message to NACK the update with it. */
  validate?: (update: SecretUpdate) => string | null;
}

export interface SecretWatchHandlers {
  onUpdate(update: SecretUpdate): void;
  onNack?(message: string): void;
  /** The stream ended with an error status; with reconnect, a new stream follows after `retryInMs`. */
  onStreamError?(error: grpc.ServiceError, retryInMs: number | null): void;
}

function dataSourceText(source: DataSource | null, what: string): string {
  if (!source || source.specifier === undefined) throw new Error(`${what} is empty`);
  if (source.specifier === 'inline_bytes' && source.inline_bytes) return source.inline_bytes.toString('utf8');
  if (source.specifier === 'inline_string' && source.inline_string !== undefined) return source.inline_string;
  throw new Error(`${what} uses a ${source.specifier} data source, which this client does not read`);
}

/**
 * The public key (canonical SPKI DER) of each private key already read, by the SHA-256 of its PEM. One process
 * watching many streams (the benchmark's load client plays thousands of Envoys) gets the same key on several streams,
 * and with several leaves (each pod of an identity proven with that identity's key); importing a PEM key costs
 * ~0.3 ms, comparing SPKI bytes nothing. At most MAX_KNOWN_KEYS, the oldest forgotten first.
 */
const publicKeyOfPrivateKey = new Map<string, Buffer>();
const MAX_KNOWN_KEYS = 16_384;

function publicKeyOf(keyPem: string): Buffer {
  const id = createHash('sha256').update(keyPem).digest('base64');
  let spki = publicKeyOfPrivateKey.get(id);
  if (spki === undefined) {
    spki = spkiDer(loadPrivateKey(keyPem));
    if (publicKeyOfPrivateKey.size >= MAX_KNOWN_KEYS) publicKeyOfPrivateKey.delete(publicKeyOfPrivateKey.keys().next().value!);
    publicKeyOfPrivateKey.set(id, spki);
  }
  return spki;
}

function assertKeyMatchesLeaf(keyPem: string, leafDer: Buffer): void {
  const ownPublicKey = publicKeyOf(keyPem);
  const leaf = parseCertificate(leafDer);
  // The same bytes are the same key. Otherwise the leaf's SPKI may still be another encoding of it (OpenSSL
  // accepts some), so it is read and written canonically before the answer is no.
  if (ownPublicKey.equals(leaf.spkiDer) || ownPublicKey.equals(spkiDer(certificatePublicKey(leaf)))) return;
  throw new Error('Failed to load private key: it does not match the certificate');
}

/** Envoy's checks on a secret before applying it (E7): chain and key parse and belong together, roots parse. */
function readSecret(secret: SecretMessage): Pick<SecretUpdate, 'certificateChain' | 'privateKey' | 'trustedCa' | 'trustDomains'> {
  if (secret.type === 'tls_certificate') {
    const chain = dataSourceText(secret.tls_certificate?.certificate_chain ?? null, 'certificate_chain');
    const key = dataSourceText(secret.tls_certificate?.private_key ?? null, 'private_key');
    const certs = certificatesFromPem(chain);
    if (certs.length === 0) throw new Error('Failed to load certificate chain: no certificate');
    assertKeyMatchesLeaf(key, certs[0]!);
    return { certificateChain: chain, privateKey: key };
  }
  const validator = secret.type === 'validation_context' ? secret.validation_context?.custom_validator_config : null;
  if (validator) {
    if (validator.name !== SPIFFE_VALIDATOR_NAME || !validator.typed_config) throw new Error(`unsupported custom validator "${validator.name}"`);
    const config = decodeSpiffeValidatorAny(validator.typed_config);
    if (config.trust_domains.length === 0) throw new Error('the SPIFFE validator holds no trust domain');
    const trustDomains = config.trust_domains.map((td) => {
      const pem = dataSourceText(td.trust_bundle, `trust_bundle of ${td.name}`);
      if (certificatesFromPem(pem).length === 0) throw new Error(`Failed to load trusted CA certificates of trust domain ${td.name}`);
      return { name: td.name, pem };
    });
    return { trustDomains };
  }
  if (secret.type === 'validation_context') {
    const roots = dataSourceText(secret.validation_context?.trusted_ca ?? null, 'trusted_ca');
    if (certificatesFromPem(roots).length === 0) throw new Error('Failed to load trusted CA certificates');
    return { trustedCa: roots };
  }
  throw new Error(`secret ${secret.name} has no tls_certificate or validation_context`);
}

export class SecretWatch {
  private stream: grpc.ClientDuplexStream<Init<DiscoveryRequest>, DiscoveryResponse> | null = null;
  private acceptedVersion = '';
  private appliedHash = '';
  private attempt = 0;
  private closed = false;
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly client: SdsClient,
    private readonly options: SecretWatchOptions,
    private readonly handlers: SecretWatchHandlers,
  ) {
    this.open();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.stream?.cancel();
    this.stream = null;
  }

  private open(): void {
    const stream = this.client.StreamSecrets(this.options.metadata());
    this.stream = stream;
    stream.on('data', (response: DiscoveryResponse) => this.onResponse(stream, response));
    stream.on('error', (error: grpc.ServiceError) => {
      if (error.code === grpc.status.CANCELLED) return;
      this.streamFailed(stream, error);
    });
    stream.on('status', (status: grpc.StatusObject) => {
      // Envoy treats any end of an xDS stream, even OK, as a failure to recover from by reconnecting.
      if (status.code !== grpc.status.OK) return;
      this.streamFailed(stream, Object.assign(new Error('the SDS server ended the stream'), { ...status, details: 'the SDS server ended the stream' }));
    });
    stream.on('end', () => undefined);
    // Reconnects start over: empty nonce, the last version this client accepted.
    stream.write({
      version_info: this.acceptedVersion,
      node: { id: this.options.nodeId ?? 'sidecar~127.0.0.1~meshca-fetch.default~default.svc.cluster.local', user_agent_name: 'meshca-fetch' },
      resource_names: [this.options.name],
      type_url: SECRET_TYPE_URL,
      response_nonce: '',
    });
  }

  private streamFailed(stream: grpc.ClientDuplexStream<Init<DiscoveryRequest>, DiscoveryResponse>, error: grpc.ServiceError): void {
    if (this.closed || this.stream !== stream) return;
    this.stream = null;
    const retry = this.options.reconnect === false ? null : backoffDelayMs(this.attempt++ + 2);
    this.handlers.onStreamError?.(error, retry);
    if (retry !== null) this.retryTimer = setTimeout(() => !this.closed && this.open(), retry);
  }

  private onResponse(stream: grpc.ClientDuplexStream<Init<DiscoveryRequest>, DiscoveryResponse>, response: DiscoveryResponse): void {
    if (response.type_url !== SECRET_TYPE_URL) return; // E4: not ours, no ACK or NACK.
    this.attempt = 0;
    const ack = (): void =>
      void stream.write({ version_info: response.version_info, resource_names: [this.options.name], type_url: SECRET_TYPE_URL, response_nonce: response.nonce });
    const nack = (message: string): void => {
      this.handlers.onNack?.(message);
      stream.write({
        version_info: this.acceptedVersion,
        resource_names: [this.options.name],
        type_url: SECRET_TYPE_URL,
        response_nonce: response.nonce,
        error_detail: { code: NACK_CODE, message },
      });
    };
    let update: SecretUpdate | null = null;
    try {
      const secrets: SecretMessage[] = [];
      for (const any of response.resources) {
        if (any.type_url !== response.type_url) throw new Error(`resource type ${any.type_url} does not match the message-wide type URL ${response.type_url}`);
        const secret = decodeSecretAny(any);
        if (secret.name === this.options.name) secrets.push(secret);
      }
      if (secrets.length > 1) throw new Error(`Unexpected SDS secrets length: ${secrets.length}`);
      if (secrets.length === 1) {
        const secret = secrets[0]!;
        update = { name: secret.name, versionInfo: response.version_info, nonce: response.nonce, secret, ...readSecret(secret) };
        const problem = this.options.validate?.(update);
        if (problem) throw new Error(problem);
      }
    } catch (error) {
      nack((error as Error).message);
      return;
    }
    this.acceptedVersion = response.version_info;
    ack();
    if (!update) return; // E6: nothing for our name; ACKed without applying.
    const hash = createHash('sha256')
      .update(`${update.certificateChain ?? ''}\0${update.privateKey ?? ''}\0${update.trustedCa ?? ''}\0`)
      // ALL carries its roots per trust domain, not in trustedCa: a new bundle must not look like the old one.
      .update(JSON.stringify(update.trustDomains ?? []))
      .digest('hex');
    if (hash === this.appliedHash) return; // E7: identical content is a no-op.
    this.appliedHash = hash;
    this.handlers.onUpdate(update);
  }
}
