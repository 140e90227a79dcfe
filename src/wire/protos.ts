/**
 * Loader and TypeScript view of meshca's own wire-compatible proto definitions
 * (see `proto/`): the Istio CA API (`istio.v1.auth.IstioCertificateService`),
 * Envoy SDS (`envoy.service.secret.v3.SecretDiscoveryService`) and meshca's
 * trust-bundle feed (`meshca.federation.v1.TrustBundleService`).
 *
 * The message, client and handler types are generated from `proto/` into
 * ./generated/ by `npm run gen:proto` (proto-loader-gen-types);
 * test/proto-generated.test.ts fails if they are stale. This module re-exports
 * them under meshca's names: `X` is the *decoded* shape (the generated
 * `X__Output`: what handlers receive and client callbacks get) and `Init<X>`
 * the shape you build and send (the generated permissive `X`).
 *
 * Messages are loaded with @grpc/proto-loader using
 * `{ keepCase: true, longs: String, enums: String, defaults: true, oneofs: true }`
 * (the generator is run with the same options), so in JS:
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
 * google.protobuf.Value members are camelCase (`stringValue`, not `string_value`):
 * protobufjs serves google/protobuf/struct.proto from its bundled JSON descriptor,
 * which names them so, and `keepCase` only affects .proto files it parses. Field
 * numbers (and so the wire format) are unaffected.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import type { ProtoGrpcType as CaProtoGrpcType } from './generated/ca.js';
import type { ProtoGrpcType as SdsProtoGrpcType } from './generated/sds.js';
import type { ProtoGrpcType as TrustBundlesProtoGrpcType } from './generated/trust_bundles.js';
import type {
  SPIFFECertValidatorConfig as SpiffeValidatorConfigInit,
  SPIFFECertValidatorConfig__Output,
} from './generated/envoy/extensions/transport_sockets/tls/v3/SPIFFECertValidatorConfig.js';
import type { TrustBundleSet as TrustBundleSetInit, TrustBundleSet__Output } from './generated/meshca/federation/v1/TrustBundleSet.js';
import type { TrustDomainBundle__Output } from './generated/meshca/federation/v1/TrustDomainBundle.js';
import type {
  TrustBundleServiceClient as GeneratedTrustBundleServiceClient,
  TrustBundleServiceDefinition,
} from './generated/meshca/federation/v1/TrustBundleService.js';
import type {
  DataSource as DataSourceInit,
  DataSource__Output,
} from './generated/envoy/config/core/v3/DataSource.js';
import type { Node as NodeInit, Node__Output } from './generated/envoy/config/core/v3/Node.js';
import type { Secret as SecretInit, Secret__Output } from './generated/envoy/extensions/transport_sockets/tls/v3/Secret.js';
import type {
  DeltaDiscoveryRequest as DeltaDiscoveryRequestInit,
  DeltaDiscoveryRequest__Output,
} from './generated/envoy/service/discovery/v3/DeltaDiscoveryRequest.js';
import type {
  DeltaDiscoveryResponse as DeltaDiscoveryResponseInit,
  DeltaDiscoveryResponse__Output,
} from './generated/envoy/service/discovery/v3/DeltaDiscoveryResponse.js';
import type {
  DiscoveryRequest as DiscoveryRequestInit,
  DiscoveryRequest__Output,
} from './generated/envoy/service/discovery/v3/DiscoveryRequest.js';
import type {
  DiscoveryResponse as DiscoveryResponseInit,
  DiscoveryResponse__Output,
} from './generated/envoy/service/discovery/v3/DiscoveryResponse.js';
import type {
  SecretDiscoveryServiceClient,
  SecretDiscoveryServiceDefinition,
  SecretDiscoveryServiceHandlers,
} from './generated/envoy/service/secret/v3/SecretDiscoveryService.js';
import type { Any__Output } from './generated/google/protobuf/Any.js';
import type { Struct as StructInit, Struct__Output } from './generated/google/protobuf/Struct.js';
import type { Value as ValueInit, Value__Output } from './generated/google/protobuf/Value.js';
import type {
  IstioCertificateRequest as IstioCertificateRequestInit,
  IstioCertificateRequest__Output,
} from './generated/istio/v1/auth/IstioCertificateRequest.js';
import type {
  IstioCertificateResponse as IstioCertificateResponseInit,
  IstioCertificateResponse__Output,
} from './generated/istio/v1/auth/IstioCertificateResponse.js';
import type {
  IstioCertificateServiceClient,
  IstioCertificateServiceDefinition,
  IstioCertificateServiceHandlers,
} from './generated/istio/v1/auth/IstioCertificateService.js';

// ---------------------------------------------------------------------------
// Proto location and load options
// ---------------------------------------------------------------------------

/**
 * Absolute path of the `proto/` directory: two levels up from src/wire (tsx), dist/wire (tsc) and dist/chunks (the
 * bundle, scripts/bundle.mjs), one level up from dist/cli.js should the bundler place this module in the entry.
 */
export const PROTO_DIR: string = ['../../proto/', '../proto/'].map((relative) => fileURLToPath(new URL(relative, import.meta.url))).find((dir) => existsSync(dir)) ?? fileURLToPath(new URL('../../proto/', import.meta.url));

const CA_PROTO = 'istio/v1/auth/ca.proto';
const SDS_PROTO = 'envoy/service/secret/v3/sds.proto';
const SECRET_PROTO = 'envoy/extensions/transport_sockets/tls/v3/secret.proto';
const SPIFFE_VALIDATOR_PROTO = 'envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config.proto';
const TRUST_BUNDLES_PROTO = 'meshca/federation/v1/trust_bundles.proto';

/** The proto-loader options every meshca gRPC endpoint uses (scripts/gen-proto.ts generates types for these). */
export const PROTO_LOADER_OPTIONS: Readonly<protoLoader.Options> = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
});

// ---------------------------------------------------------------------------
// Message types: decoded shapes, from ./generated
// ---------------------------------------------------------------------------

/** int64 values as they appear in JS with `longs: String` (decimal string). */
export type Int64String = string;

/** google.protobuf.Struct. */
export type Struct = Struct__Output;
/** google.protobuf.Any. */
export type Any = Any__Output;
/** istio.v1.auth.IstioCertificateRequest. `validity_duration` is '0' when unset; `metadata` null when absent. */
export type IstioCertificateRequest = IstioCertificateRequest__Output;
/** istio.v1.auth.IstioCertificateResponse: PEM certificates, leaf first, root last. */
export type IstioCertificateResponse = IstioCertificateResponse__Output;
/** envoy.config.core.v3.Node. */
export type Node = Node__Output;
/** envoy.config.core.v3.DataSource: `specifier` names the member that is set (absent when none). */
export type DataSource = DataSource__Output;
/** envoy.extensions.transport_sockets.tls.v3.Secret (the SDS resource): `type` names the member that is set. */
export type SecretMessage = Secret__Output;
/** envoy.service.discovery.v3.DiscoveryRequest (SotW). */
export type DiscoveryRequest = DiscoveryRequest__Output;
/** envoy.service.discovery.v3.DiscoveryResponse (SotW). */
export type DiscoveryResponse = DiscoveryResponse__Output;
/** envoy.service.discovery.v3.DeltaDiscoveryRequest. */
export type DeltaDiscoveryRequest = DeltaDiscoveryRequest__Output;
/** envoy.service.discovery.v3.DeltaDiscoveryResponse. */
export type DeltaDiscoveryResponse = DeltaDiscoveryResponse__Output;
/** envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig (inside a custom_validator_config Any). */
export type SpiffeValidatorConfig = SPIFFECertValidatorConfig__Output;
/** meshca.federation.v1.TrustBundleSet: the own trust domain's bundle first, then the federated ones. */
export type TrustBundleSetMessage = TrustBundleSet__Output;
/** meshca.federation.v1.TrustDomainBundle: `sequence` is a decimal string ('0' when unknown). */
export type TrustDomainBundleMessage = TrustDomainBundle__Output;

/** Decoded shape -> the generated permissive shape for building that message. */
interface InitTable {
  Struct: [Struct, StructInit];
  IstioCertificateRequest: [IstioCertificateRequest, IstioCertificateRequestInit];
  IstioCertificateResponse: [IstioCertificateResponse, IstioCertificateResponseInit];
  Node: [Node, NodeInit];
  DataSource: [DataSource, DataSourceInit];
  Secret: [SecretMessage, SecretInit];
  DiscoveryRequest: [DiscoveryRequest, DiscoveryRequestInit];
  DiscoveryResponse: [DiscoveryResponse, DiscoveryResponseInit];
  DeltaDiscoveryRequest: [DeltaDiscoveryRequest, DeltaDiscoveryRequestInit];
  DeltaDiscoveryResponse: [DeltaDiscoveryResponse, DeltaDiscoveryResponseInit];
  SpiffeValidatorConfig: [SpiffeValidatorConfig, SpiffeValidatorConfigInit];
  TrustBundleSet: [TrustBundleSetMessage, TrustBundleSetInit];
}

/**
 * Input shape for a message you send (the generated permissive type: fields
 * optional; bytes may be Buffer, Uint8Array or base64; int64 number or string).
 * Defined only for the messages in InitTable: any other T gives `never`.
 */
export type Init<T> = {
  [K in keyof InitTable]: [T] extends [InitTable[K][0]] ? ([InitTable[K][0]] extends [T] ? InitTable[K][1] : never) : never;
}[keyof InitTable];

// ---------------------------------------------------------------------------
// Typed service definitions, handlers and clients, from ./generated
// ---------------------------------------------------------------------------

export type IstioCaServiceDefinition = IstioCertificateServiceDefinition;
export type SdsServiceDefinition = SecretDiscoveryServiceDefinition;

/** Server implementation shape for `server.addService(istioCaService, impl)`. */
export type IstioCaHandlers = IstioCertificateServiceHandlers;
/** Server implementation shape for `server.addService(sdsService, impl)`. */
export type SdsHandlers = SecretDiscoveryServiceHandlers;

/** Client for istio.v1.auth.IstioCertificateService. */
export type IstioCaClient = IstioCertificateServiceClient;
/** Client for envoy.service.secret.v3.SecretDiscoveryService. */
export type SdsClient = SecretDiscoveryServiceClient;

/** Client for meshca.federation.v1.TrustBundleService. */
export type TrustBundleServiceClient = GeneratedTrustBundleServiceClient;

/**
 * The Secret message and the SPIFFE validator configuration (not part of any service's closure: SDS carries the
 * Secret inside google.protobuf.Any, and the Secret carries the validator configuration inside another).
 */
interface SecretPackage {
  envoy: {
    extensions: {
      transport_sockets: {
        tls: {
          v3: {
            Secret: protoLoader.MessageTypeDefinition<SecretInit, Secret__Output>;
            SPIFFECertValidatorConfig: protoLoader.MessageTypeDefinition<SpiffeValidatorConfigInit, SPIFFECertValidatorConfig__Output>;
          };
        };
      };
    };
  };
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

export const ISTIO_CA_SERVICE_NAME = 'istio.v1.auth.IstioCertificateService';
export const SDS_SERVICE_NAME = 'envoy.service.secret.v3.SecretDiscoveryService';
export const TRUST_BUNDLE_SERVICE_NAME = 'meshca.federation.v1.TrustBundleService';

/** The proto-loader package definition holding the services, the Secret resource and all their messages. */
export const packageDefinition: protoLoader.PackageDefinition = protoLoader.loadSync(
  [CA_PROTO, SDS_PROTO, TRUST_BUNDLES_PROTO, SECRET_PROTO, SPIFFE_VALIDATOR_PROTO],
  { ...PROTO_LOADER_OPTIONS, includeDirs: [PROTO_DIR] }, // fresh includeDirs array per load
);

/**
 * The loaded object tree. grpc-js types it as a generic index; the generated
 * ProtoGrpcTypes describe what these very .proto files load into (kept current
 * by test/proto-generated.test.ts), so this is the one place that narrows it.
 */
const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as CaProtoGrpcType &
  SdsProtoGrpcType &
  TrustBundlesProtoGrpcType &
  SecretPackage;

/** Client class for the Istio CA API: `new IstioCaClient(address, credentials, options?)`. */
export const IstioCaClient = loaded.istio.v1.auth.IstioCertificateService;

/** Client class for SDS: `new SdsClient(address, credentials, options?)`. */
export const SdsClient = loaded.envoy.service.secret.v3.SecretDiscoveryService;

/** grpc-js ServiceDefinition for istio.v1.auth.IstioCertificateService. */
export const istioCaService: IstioCaServiceDefinition = IstioCaClient.service;

/** grpc-js ServiceDefinition for envoy.service.secret.v3.SecretDiscoveryService. */
export const sdsService: SdsServiceDefinition = SdsClient.service;

/** Client class for the trust-bundle feed: `new TrustBundleServiceClient(address, credentials, options?)`. */
export const TrustBundleServiceClient = loaded.meshca.federation.v1.TrustBundleService;

/** grpc-js ServiceDefinition for meshca.federation.v1.TrustBundleService. */
export const trustBundleService: TrustBundleServiceDefinition = TrustBundleServiceClient.service;

const trustBundleSetType = loaded.meshca.federation.v1.TrustBundleSet;

/** Encodes a TrustBundleSet once, for every stream that sends it (see `preEncodedTrustBundleService`). */
export function encodeTrustBundleSet(set: Init<TrustBundleSetMessage>): Buffer {
  return toBuffer(trustBundleSetType.serialize(set));
}

/** Decodes a TrustBundleSet (tests, and the IPC path's checks). */
export function decodeTrustBundleSet(bytes: Uint8Array): TrustBundleSetMessage {
  return trustBundleSetType.deserialize(toBuffer(bytes));
}

/**
 * The TrustBundleService definition for a server that writes responses already encoded (`encodeTrustBundleSet`):
 * its response serializer passes the bytes through, so thousands of watchers share one encoding of each set.
 */
export const preEncodedTrustBundleService: grpc.ServiceDefinition<{ WatchTrustBundles: grpc.handleServerStreamingCall<unknown, Buffer> }> = {
  WatchTrustBundles: { ...trustBundleService.WatchTrustBundles, responseSerialize: (bytes: Buffer) => bytes },
};

const secretType = loaded.envoy.extensions.transport_sockets.tls.v3.Secret;
const spiffeValidatorType = loaded.envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig;

/** The custom validator extension whose configuration is a SPIFFECertValidatorConfig. */
export const SPIFFE_VALIDATOR_NAME = 'envoy.tls.cert_validator.spiffe';
export const SPIFFE_VALIDATOR_TYPE_URL = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig';

/** A SPIFFECertValidatorConfig as the google.protobuf.Any of a custom_validator_config. */
export function encodeSpiffeValidatorAny(config: Init<SpiffeValidatorConfig>): { type_url: string; value: Buffer } {
  return { type_url: SPIFFE_VALIDATOR_TYPE_URL, value: toBuffer(spiffeValidatorType.serialize(config)) };
}

/** Decodes the Any of a custom_validator_config holding a SPIFFECertValidatorConfig; throws on another type. */
export function decodeSpiffeValidatorAny(any: { type_url: string; value: Uint8Array }): SpiffeValidatorConfig {
  if (any.type_url !== SPIFFE_VALIDATOR_TYPE_URL) {
    throw new TypeError(`expected Any of type ${SPIFFE_VALIDATOR_TYPE_URL}, got ${JSON.stringify(any.type_url)}`);
  }
  return spiffeValidatorType.deserialize(toBuffer(any.value));
}

// ---------------------------------------------------------------------------
// Secret <-> google.protobuf.Any
// ---------------------------------------------------------------------------

/** Type URL of an SDS v3 Secret resource. */
export const SECRET_TYPE_URL = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret';

/** Type URL of the SotW/Delta `Resource` wrapper. */
export const RESOURCE_TYPE_URL = 'type.googleapis.com/envoy.service.discovery.v3.Resource';

function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Encode a Secret as a google.protobuf.Any for DiscoveryResponse.resources / Resource.resource.
 * (proto-loader's serializer: protobufjs `fromObject` + `encode`, as for every gRPC message.)
 */
export function encodeSecretAny(secret: Init<SecretMessage>): { type_url: string; value: Buffer } {
  return { type_url: SECRET_TYPE_URL, value: toBuffer(secretType.serialize(secret)) };
}

/** Decode a google.protobuf.Any holding a Secret. Throws if the type URL is not SECRET_TYPE_URL. */
export function decodeSecretAny(any: { type_url: string; value: Uint8Array | string }): SecretMessage {
  if (any.type_url !== SECRET_TYPE_URL) {
    throw new TypeError(`expected Any of type ${SECRET_TYPE_URL}, got ${JSON.stringify(any.type_url)}`);
  }
  const bytes = typeof any.value === 'string' ? Buffer.from(any.value, 'base64') : toBuffer(any.value);
  return secretType.deserialize(bytes);
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

function valueToJson(value: ValueInit | undefined): JsonValue {
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

function jsonToValue(v: unknown, seen: Set<object>): Value__Output {
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
  const fields: Record<string, Value__Output> = {};
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
