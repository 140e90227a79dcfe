/**
 * Loader and TypeScript view of meshca's own wire-compatible proto definitions
 * (see `proto/`): the Istio CA API (`istio.v1.auth.IstioCertificateService`)
 * and Envoy SDS (`envoy.service.secret.v3.SecretDiscoveryService`).
 *
 * Messages are loaded with @grpc/proto-loader using
 * `{ keepCase: true, longs: String, enums: String, defaults: true, oneofs: true }`,
 * so in JS:
 *   - field names are the proto snake_case names;
 *   - int64/uint64 are decimal strings (default '0');
 *   - enums are their value names (e.g. 'NULL_VALUE', 'VERIFY_TRUST_CHAIN');
 *   - bytes are Buffers (default empty Buffer);
 *   - scalars default to ''/0/false, repeated to [], maps to {};
 *   - singular message fields default to `null` when absent;
 *   - oneof members are present only when set; the oneof name holds the name
 *     of the member that is set (e.g. `secret.type === 'tls_certificate'`) and
 *     is absent when none is.
 *
 * The interfaces below describe *decoded* messages (what handlers receive and
 * what client callbacks get). For messages you build and send, use `Init<T>`:
 * every field is optional, bytes may be Uint8Array or base64 string.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

// ---------------------------------------------------------------------------
// Proto location and load options
// ---------------------------------------------------------------------------

/** Absolute path of the `proto/` directory (works from src/wire under tsx and from dist/wire). */
export const PROTO_DIR: string = fileURLToPath(new URL('../../proto/', import.meta.url));

const CA_PROTO = 'istio/v1/auth/ca.proto';
const SDS_PROTO = 'envoy/service/secret/v3/sds.proto';
const SECRET_PROTO = 'envoy/extensions/transport_sockets/tls/v3/secret.proto';

/** The proto-loader options every meshca gRPC endpoint uses. */
export const PROTO_LOADER_OPTIONS: Readonly<protoLoader.Options> = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
});

// ---------------------------------------------------------------------------
// Message types (decoded shapes)
// ---------------------------------------------------------------------------

/** Input shape for a message you send: all fields optional; bytes may be Uint8Array or base64. */
export type Init<T> = T extends Buffer
  ? Uint8Array | string
  : T extends readonly (infer U)[]
    ? Init<U>[]
    : T extends object
      ? { [K in keyof T]?: Init<T[K]> }
      : T;

/** int64 values as they appear in JS with `longs: String` (decimal string). */
export type Int64String = string;

/** google.protobuf.NullValue. */
export type NullValue = 'NULL_VALUE';

/**
 * google.protobuf.Value: exactly one `kind` member is set (none when the value is empty on the wire).
 *
 * NOTE: the member names are camelCase (`stringValue`, not `string_value`) even though
 * everything else is snake_case: protobufjs serves google/protobuf/struct.proto from its
 * bundled JSON descriptor, which names these fields in camelCase, and `keepCase` only
 * affects .proto files it parses. Field numbers (and so the wire format) are unaffected.
 */
export type Value =
  | { kind: 'nullValue'; nullValue: NullValue }
  | { kind: 'numberValue'; numberValue: number }
  | { kind: 'stringValue'; stringValue: string }
  | { kind: 'boolValue'; boolValue: boolean }
  | { kind: 'structValue'; structValue: Struct }
  | { kind: 'listValue'; listValue: ListValue }
  | { kind?: undefined };

/** google.protobuf.Struct. */
export interface Struct {
  fields: Record<string, Value>;
}

/** google.protobuf.ListValue. */
export interface ListValue {
  values: Value[];
}

/** google.protobuf.Any. */
export interface Any {
  type_url: string;
  value: Buffer;
}

/** google.protobuf.Duration. */
export interface Duration {
  seconds: Int64String;
  nanos: number;
}

/** google.protobuf.BoolValue. */
export interface BoolValue {
  value: boolean;
}

/** google.protobuf.UInt32Value. */
export interface UInt32Value {
  value: number;
}

/** google.rpc.Status. */
export interface Status {
  code: number;
  message: string;
  details: Any[];
}

// --- istio.v1.auth ---------------------------------------------------------

/** istio.v1.auth.IstioCertificateRequest. */
export interface IstioCertificateRequest {
  /** PEM CSR. */
  csr: string;
  /** Requested lifetime in seconds ('0' when unset; <= 0 means server default). */
  validity_duration: Int64String;
  /** null when the client sent no metadata (pre-1.8 clients never do). */
  metadata: Struct | null;
}

/** istio.v1.auth.IstioCertificateResponse. */
export interface IstioCertificateResponse {
  /** PEM certificates, leaf first, root last. */
  cert_chain: string[];
}

// --- envoy.config.core.v3 --------------------------------------------------

/** envoy.config.core.v3.Locality. */
export interface Locality {
  region: string;
  zone: string;
  sub_zone: string;
}

/** envoy.config.core.v3.BuildVersion (subset: `version = 1` is not declared). */
export interface BuildVersion {
  /** null when absent. */
  metadata: Struct | null;
}

/** envoy.config.core.v3.Extension. */
export interface Extension {
  name: string;
  category: string;
  type_descriptor: string;
  /** null when absent. */
  version: BuildVersion | null;
  disabled: boolean;
  type_urls: string[];
}

interface NodeBase {
  id: string;
  cluster: string;
  /** null when absent. */
  metadata: Struct | null;
  /** null when absent. */
  locality: Locality | null;
  user_agent_name: string;
  extensions: Extension[];
  client_features: string[];
}

/**
 * envoy.config.core.v3.Node (subset: listening_addresses = 11 and
 * dynamic_parameters = 12 are not declared and are skipped when decoding).
 */
export type Node = NodeBase &
  (
    | { user_agent_version_type: 'user_agent_version'; user_agent_version: string }
    | { user_agent_version_type: 'user_agent_build_version'; user_agent_build_version: BuildVersion }
    | { user_agent_version_type?: undefined }
  );

/** envoy.config.core.v3.Metadata. */
export interface Metadata {
  filter_metadata: Record<string, Struct>;
  typed_filter_metadata: Record<string, Any>;
}

/** envoy.config.core.v3.ControlPlane. */
export interface ControlPlane {
  identifier: string;
}

/** envoy.config.core.v3.WatchedDirectory. */
export interface WatchedDirectory {
  path: string;
}

/** envoy.config.core.v3.DataSource: `specifier` names the member that is set (absent when none). */
export type DataSource = {
  /** null when absent. */
  watched_directory: WatchedDirectory | null;
} & (
  | { specifier: 'filename'; filename: string }
  | { specifier: 'inline_bytes'; inline_bytes: Buffer }
  | { specifier: 'inline_string'; inline_string: string }
  | { specifier: 'environment_variable'; environment_variable: string }
  | { specifier?: undefined }
);

// --- envoy.extensions.transport_sockets.tls.v3 -----------------------------

/** envoy.extensions.transport_sockets.tls.v3.PrivateKeyProvider. */
export interface PrivateKeyProvider {
  provider_name: string;
  /** null when absent. */
  typed_config: Any | null;
  fallback: boolean;
}

/** envoy.extensions.transport_sockets.tls.v3.TlsCertificate. All singular message fields are null when absent. */
export interface TlsCertificate {
  certificate_chain: DataSource | null;
  private_key: DataSource | null;
  password: DataSource | null;
  ocsp_staple: DataSource | null;
  signed_certificate_timestamp: DataSource[];
  private_key_provider: PrivateKeyProvider | null;
  watched_directory: WatchedDirectory | null;
  pkcs12: DataSource | null;
}

/** envoy.extensions.transport_sockets.tls.v3.TlsSessionTicketKeys. */
export interface TlsSessionTicketKeys {
  keys: DataSource[];
}

/** envoy.extensions.transport_sockets.tls.v3.CertificateProviderPluginInstance. */
export interface CertificateProviderPluginInstance {
  instance_name: string;
  certificate_name: string;
}

/** CertificateValidationContext.TrustChainVerification. */
export type TrustChainVerification = 'VERIFY_TRUST_CHAIN' | 'ACCEPT_UNTRUSTED';

/**
 * envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext
 * (subset: match_subject_alt_names = 9, custom_validator_config = 12 and
 * match_typed_subject_alt_names = 15 are not declared). All singular message
 * fields are null when absent.
 */
export interface CertificateValidationContext {
  trusted_ca: DataSource | null;
  verify_certificate_hash: string[];
  verify_certificate_spki: string[];
  require_signed_certificate_timestamp: BoolValue | null;
  crl: DataSource | null;
  allow_expired_certificate: boolean;
  trust_chain_verification: TrustChainVerification;
  watched_directory: WatchedDirectory | null;
  ca_certificate_provider_instance: CertificateProviderPluginInstance | null;
  only_verify_leaf_cert_crl: boolean;
  max_verify_depth: UInt32Value | null;
  system_root_certs: Record<string, never> | null;
}

/** envoy.extensions.transport_sockets.tls.v3.GenericSecret. */
export interface GenericSecret {
  /** null when absent. */
  secret: DataSource | null;
  secrets: Record<string, DataSource>;
}

/**
 * envoy.extensions.transport_sockets.tls.v3.Secret (the SDS resource).
 * `type` names the member that is set (absent when none).
 */
export type SecretMessage = { name: string } & (
  | { type: 'tls_certificate'; tls_certificate: TlsCertificate }
  | { type: 'session_ticket_keys'; session_ticket_keys: TlsSessionTicketKeys }
  | { type: 'validation_context'; validation_context: CertificateValidationContext }
  | { type: 'generic_secret'; generic_secret: GenericSecret }
  | { type?: undefined }
);

// --- envoy.service.discovery.v3 --------------------------------------------

/** envoy.service.discovery.v3.ResourceLocator. */
export interface ResourceLocator {
  name: string;
  dynamic_parameters: Record<string, string>;
}

/** DynamicParameterConstraints.SingleConstraint: `constraint_type` names the member that is set. */
export type SingleConstraint = { key: string } & (
  | { constraint_type: 'value'; value: string }
  | { constraint_type: 'exists'; exists: Record<string, never> }
  | { constraint_type?: undefined }
);

/** DynamicParameterConstraints.ConstraintList. */
export interface ConstraintList {
  constraints: DynamicParameterConstraints[];
}

/** envoy.service.discovery.v3.DynamicParameterConstraints: `type` names the member that is set. */
export type DynamicParameterConstraints =
  | { type: 'constraint'; constraint: SingleConstraint }
  | { type: 'or_constraints'; or_constraints: ConstraintList }
  | { type: 'and_constraints'; and_constraints: ConstraintList }
  | { type: 'not_constraints'; not_constraints: DynamicParameterConstraints }
  | { type?: undefined };

/** envoy.service.discovery.v3.ResourceName. */
export interface ResourceName {
  name: string;
  /** null when absent. */
  dynamic_parameter_constraints: DynamicParameterConstraints | null;
}

/** envoy.service.discovery.v3.ResourceError. */
export interface ResourceError {
  /** null when absent. */
  resource_name: ResourceName | null;
  /** null when absent. */
  error_detail: Status | null;
}

/** envoy.service.discovery.v3.DiscoveryRequest (SotW). */
export interface DiscoveryRequest {
  /** '' on the first request of a stream; last applied version on ACK/NACK. */
  version_info: string;
  /** null when absent (only the first request of a stream is guaranteed to carry it). */
  node: Node | null;
  resource_names: string[];
  type_url: string;
  /** '' on the first request of a stream. */
  response_nonce: string;
  /** null unless the request is a NACK. */
  error_detail: Status | null;
  resource_locators: ResourceLocator[];
}

/** envoy.service.discovery.v3.DiscoveryResponse (SotW). */
export interface DiscoveryResponse {
  version_info: string;
  resources: Any[];
  canary: boolean;
  type_url: string;
  nonce: string;
  /** null when absent. */
  control_plane: ControlPlane | null;
  resource_errors: ResourceError[];
}

/** envoy.service.discovery.v3.DeltaDiscoveryRequest. */
export interface DeltaDiscoveryRequest {
  /** null when absent (only guaranteed on the first request of a stream). */
  node: Node | null;
  type_url: string;
  resource_names_subscribe: string[];
  resource_names_unsubscribe: string[];
  initial_resource_versions: Record<string, string>;
  /** '' unless the request is an ACK/NACK. */
  response_nonce: string;
  /** null unless the request is a NACK. */
  error_detail: Status | null;
  resource_locators_subscribe: ResourceLocator[];
  resource_locators_unsubscribe: ResourceLocator[];
}

/** envoy.service.discovery.v3.Resource.CacheControl. */
export interface CacheControl {
  do_not_cache: boolean;
}

/** envoy.service.discovery.v3.Resource. All singular message fields are null when absent. */
export interface Resource {
  version: string;
  resource: Any | null;
  name: string;
  aliases: string[];
  ttl: Duration | null;
  cache_control: CacheControl | null;
  resource_name: ResourceName | null;
  metadata: Metadata | null;
}

/** envoy.service.discovery.v3.DeltaDiscoveryResponse. */
export interface DeltaDiscoveryResponse {
  system_version_info: string;
  resources: Resource[];
  type_url: string;
  nonce: string;
  removed_resources: string[];
  /** null when absent. */
  control_plane: ControlPlane | null;
  removed_resource_names: ResourceName[];
  resource_errors: ResourceError[];
}

// ---------------------------------------------------------------------------
// Typed service definitions, handlers and clients
// ---------------------------------------------------------------------------

/**
 * A grpc-js method definition typed with meshca's message shapes: serializers
 * take `Init<…>`, deserializers return the decoded shape. Assignable to
 * grpc-js `MethodDefinition<any, any>`.
 */
export interface WireMethodDefinition<Req, Res> {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  originalName?: string;
  requestSerialize: (value: Init<Req>) => Buffer;
  requestDeserialize: (bytes: Buffer) => Req;
  responseSerialize: (value: Init<Res>) => Buffer;
  responseDeserialize: (bytes: Buffer) => Res;
}

export type IstioCaServiceDefinition = {
  readonly CreateCertificate: WireMethodDefinition<IstioCertificateRequest, IstioCertificateResponse>;
};

export type SdsServiceDefinition = {
  readonly StreamSecrets: WireMethodDefinition<DiscoveryRequest, DiscoveryResponse>;
  readonly DeltaSecrets: WireMethodDefinition<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;
  readonly FetchSecrets: WireMethodDefinition<DiscoveryRequest, DiscoveryResponse>;
};

/** Server implementation shape for `server.addService(istioCaService, impl)`. */
export type IstioCaHandlers = {
  CreateCertificate: grpc.handleUnaryCall<IstioCertificateRequest, Init<IstioCertificateResponse>>;
};

/** Server implementation shape for `server.addService(sdsService, impl)`. */
export type SdsHandlers = {
  StreamSecrets: grpc.handleBidiStreamingCall<DiscoveryRequest, Init<DiscoveryResponse>>;
  DeltaSecrets: grpc.handleBidiStreamingCall<DeltaDiscoveryRequest, Init<DeltaDiscoveryResponse>>;
  FetchSecrets: grpc.handleUnaryCall<DiscoveryRequest, Init<DiscoveryResponse>>;
};

/** Client for istio.v1.auth.IstioCertificateService. */
export interface IstioCaClient extends grpc.Client {
  CreateCertificate(
    argument: Init<IstioCertificateRequest>,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: grpc.requestCallback<IstioCertificateResponse>,
  ): grpc.ClientUnaryCall;
  CreateCertificate(
    argument: Init<IstioCertificateRequest>,
    metadata: grpc.Metadata,
    callback: grpc.requestCallback<IstioCertificateResponse>,
  ): grpc.ClientUnaryCall;
  CreateCertificate(
    argument: Init<IstioCertificateRequest>,
    options: grpc.CallOptions,
    callback: grpc.requestCallback<IstioCertificateResponse>,
  ): grpc.ClientUnaryCall;
  CreateCertificate(
    argument: Init<IstioCertificateRequest>,
    callback: grpc.requestCallback<IstioCertificateResponse>,
  ): grpc.ClientUnaryCall;
}

/** Client for envoy.service.secret.v3.SecretDiscoveryService. */
export interface SdsClient extends grpc.Client {
  StreamSecrets(
    metadata?: grpc.Metadata,
    options?: grpc.CallOptions,
  ): grpc.ClientDuplexStream<Init<DiscoveryRequest>, DiscoveryResponse>;
  StreamSecrets(options?: grpc.CallOptions): grpc.ClientDuplexStream<Init<DiscoveryRequest>, DiscoveryResponse>;
  DeltaSecrets(
    metadata?: grpc.Metadata,
    options?: grpc.CallOptions,
  ): grpc.ClientDuplexStream<Init<DeltaDiscoveryRequest>, DeltaDiscoveryResponse>;
  DeltaSecrets(
    options?: grpc.CallOptions,
  ): grpc.ClientDuplexStream<Init<DeltaDiscoveryRequest>, DeltaDiscoveryResponse>;
  FetchSecrets(
    argument: Init<DiscoveryRequest>,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
    callback: grpc.requestCallback<DiscoveryResponse>,
  ): grpc.ClientUnaryCall;
  FetchSecrets(
    argument: Init<DiscoveryRequest>,
    metadata: grpc.Metadata,
    callback: grpc.requestCallback<DiscoveryResponse>,
  ): grpc.ClientUnaryCall;
  FetchSecrets(
    argument: Init<DiscoveryRequest>,
    options: grpc.CallOptions,
    callback: grpc.requestCallback<DiscoveryResponse>,
  ): grpc.ClientUnaryCall;
  FetchSecrets(argument: Init<DiscoveryRequest>, callback: grpc.requestCallback<DiscoveryResponse>): grpc.ClientUnaryCall;
}

/** Constructor shape of a loaded client class. */
export interface WireClientConstructor<C, D> {
  new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ClientOptions): C;
  service: D;
  serviceName: string;
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

export const ISTIO_CA_SERVICE_NAME = 'istio.v1.auth.IstioCertificateService';
export const SDS_SERVICE_NAME = 'envoy.service.secret.v3.SecretDiscoveryService';

/** The proto-loader package definition holding both services and all their messages. */
export const packageDefinition: protoLoader.PackageDefinition = protoLoader.loadSync(
  [CA_PROTO, SDS_PROTO],
  { ...PROTO_LOADER_OPTIONS, includeDirs: [PROTO_DIR] }, // fresh includeDirs array per load
);

function serviceDefinition<D>(name: string, methods: readonly string[]): D {
  const def = packageDefinition[name];
  if (def === undefined || 'format' in def) {
    throw new Error(`proto service ${name} not found in ${PROTO_DIR}`);
  }
  for (const m of methods) {
    const md = (def as protoLoader.ServiceDefinition)[m];
    if (md === undefined || md.path !== `/${name}/${m}`) {
      throw new Error(`proto service ${name} lacks method ${m}`);
    }
  }
  return def as unknown as D;
}

const grpcObject: grpc.GrpcObject = grpc.loadPackageDefinition(packageDefinition);

function clientConstructor<C>(name: string): C {
  let node: unknown = grpcObject;
  for (const part of name.split('.')) {
    node = node != null && typeof node === 'object' ? (node as Record<string, unknown>)[part] : undefined;
  }
  if (typeof node !== 'function') {
    throw new Error(`gRPC client for ${name} not found`);
  }
  return node as C;
}

/** grpc-js ServiceDefinition for istio.v1.auth.IstioCertificateService. */
export const istioCaService: IstioCaServiceDefinition = serviceDefinition<IstioCaServiceDefinition>(
  ISTIO_CA_SERVICE_NAME,
  ['CreateCertificate'],
);

/** grpc-js ServiceDefinition for envoy.service.secret.v3.SecretDiscoveryService. */
export const sdsService: SdsServiceDefinition = serviceDefinition<SdsServiceDefinition>(SDS_SERVICE_NAME, [
  'StreamSecrets',
  'DeltaSecrets',
  'FetchSecrets',
]);

/** Client class for the Istio CA API: `new IstioCaClient(address, credentials, options?)`. */
export const IstioCaClient: WireClientConstructor<IstioCaClient, IstioCaServiceDefinition> = clientConstructor<
  WireClientConstructor<IstioCaClient, IstioCaServiceDefinition>
>(ISTIO_CA_SERVICE_NAME);

/** Client class for SDS: `new SdsClient(address, credentials, options?)`. */
export const SdsClient: WireClientConstructor<SdsClient, SdsServiceDefinition> = clientConstructor<
  WireClientConstructor<SdsClient, SdsServiceDefinition>
>(SDS_SERVICE_NAME);

// ---------------------------------------------------------------------------
// Secret <-> google.protobuf.Any
// ---------------------------------------------------------------------------

/** Type URL of an SDS v3 Secret resource. */
export const SECRET_TYPE_URL = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret';

/** Type URL of the SotW/Delta `Resource` wrapper. */
export const RESOURCE_TYPE_URL = 'type.googleapis.com/envoy.service.discovery.v3.Resource';

const CONVERSION_OPTIONS: protobuf.IConversionOptions = {
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

const secretType: protobuf.Type = (() => {
  const root = new protobuf.Root();
  root.resolvePath = (_origin: string, target: string): string =>
    path.isAbsolute(target) ? target : path.join(PROTO_DIR, target);
  root.loadSync(SECRET_PROTO, { keepCase: true });
  root.resolveAll();
  return root.lookupType('envoy.extensions.transport_sockets.tls.v3.Secret');
})();

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Encode a Secret as a google.protobuf.Any for DiscoveryResponse.resources / Resource.resource. */
export function encodeSecretAny(secret: Init<SecretMessage>): { type_url: string; value: Buffer } {
  const message = secretType.fromObject(secret as Record<string, unknown>);
  return { type_url: SECRET_TYPE_URL, value: toBuffer(secretType.encode(message).finish()) };
}

/** Decode a google.protobuf.Any holding a Secret. Throws if the type URL is not SECRET_TYPE_URL. */
export function decodeSecretAny(any: { type_url: string; value: Uint8Array | string }): SecretMessage {
  if (any.type_url !== SECRET_TYPE_URL) {
    throw new TypeError(`expected Any of type ${SECRET_TYPE_URL}, got ${JSON.stringify(any.type_url)}`);
  }
  const bytes = typeof any.value === 'string' ? Buffer.from(any.value, 'base64') : any.value;
  return secretType.toObject(secretType.decode(bytes), CONVERSION_OPTIONS) as unknown as SecretMessage;
}

// ---------------------------------------------------------------------------
// google.protobuf.Struct <-> plain JSON-like objects
// ---------------------------------------------------------------------------

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

function setOwn<V>(target: Record<string, V>, key: string, value: V): void {
  // '__proto__' must become an own property, not the prototype.
  Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
}

function valueToJson(value: Init<Value> | undefined): JsonValue {
  if (value == null) return null;
  if ('structValue' in value && value.structValue != null) return structToObject(value.structValue);
  if ('listValue' in value && value.listValue != null) {
    return (value.listValue.values ?? []).map((v) => valueToJson(v));
  }
  if ('stringValue' in value && value.stringValue != null) return value.stringValue;
  if ('numberValue' in value && value.numberValue != null) return value.numberValue;
  if ('boolValue' in value && value.boolValue != null) return value.boolValue;
  // nullValue, or an empty Value (no kind set).
  return null;
}

/**
 * Convert a google.protobuf.Struct (decoded or hand-built) into a plain object.
 * null/undefined yields `{}`; a Value with no kind set becomes `null`.
 */
export function structToObject(struct: Init<Struct> | null | undefined): JsonObject {
  const out: JsonObject = {};
  const fields = struct?.fields;
  if (fields == null) return out;
  for (const key of Object.keys(fields)) {
    setOwn(out, key, valueToJson(fields[key]));
  }
  return out;
}

function jsonToValue(v: unknown, seen: Set<object>): Value {
  if (v === null) return { kind: 'nullValue', nullValue: 'NULL_VALUE' };
  switch (typeof v) {
    case 'string':
      return { kind: 'stringValue', stringValue: v };
    case 'number':
      return { kind: 'numberValue', numberValue: v };
    case 'boolean':
      return { kind: 'boolValue', boolValue: v };
    case 'object':
      break;
    default:
      throw new TypeError(`cannot convert ${typeof v} to google.protobuf.Value`);
  }
  if (seen.has(v)) throw new TypeError('cannot convert a cyclic object to google.protobuf.Value');
  seen.add(v);
  try {
    if (Array.isArray(v)) {
      return { kind: 'listValue', listValue: { values: v.map((item: unknown) => jsonToValue(item, seen)) } };
    }
    return { kind: 'structValue', structValue: toStruct(v as Record<string, unknown>, seen) };
  } finally {
    seen.delete(v);
  }
}

function toStruct(obj: Readonly<Record<string, unknown>>, seen: Set<object>): Struct {
  const fields: Record<string, Value> = {};
  for (const key of Object.keys(obj)) {
    const v = obj[key];
    if (v === undefined) continue; // like JSON.stringify: undefined members are dropped
    setOwn(fields, key, jsonToValue(v, seen));
  }
  return { fields };
}

/**
 * Convert a plain object (string/number/boolean/null/array/object values) into a
 * google.protobuf.Struct. Keys whose value is `undefined` are skipped; other
 * non-JSON values (functions, bigint, symbols, cycles) throw a TypeError.
 */
export function objectToStruct(obj: Readonly<Record<string, JsonValue | undefined>>): Struct {
  return toStruct(obj, new Set<object>([obj]));
}
