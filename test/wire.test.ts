import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import {
  decodeSecretAny,
  encodeSecretAny,
  IstioCaClient,
  istioCaService,
  objectToStruct,
  SdsClient,
  sdsService,
  SECRET_TYPE_URL,
  structToObject,
  type DeltaDiscoveryRequest,
  type DeltaDiscoveryResponse,
  type DiscoveryRequest,
  type DiscoveryResponse,
  type Init,
  type IstioCaHandlers,
  type IstioCertificateRequest,
  type IstioCertificateResponse,
  type JsonObject,
  type Node,
  type SdsHandlers,
} from '../src/wire/protos.js';

// ---------------------------------------------------------------------------
// Minimal protobuf wire reader (independent of protobufjs) for tag checks.
// ---------------------------------------------------------------------------

interface WireField {
  field: number;
  wireType: number;
  /** First byte(s) of the key as on the wire (single byte for fields < 16). */
  tag: number;
  varint?: bigint;
  bytes?: Buffer;
}

function readVarint(buf: Buffer, pos: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    assert.ok(pos < buf.length, 'truncated varint');
    const b = buf[pos++]!;
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7n;
  }
}

function readFields(buf: Buffer): WireField[] {
  const out: WireField[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const [key, next] = readVarint(buf, pos);
    pos = next;
    const field = Number(key >> 3n);
    const wireType = Number(key & 7n);
    const f: WireField = { field, wireType, tag: Number(key) };
    switch (wireType) {
      case 0: {
        const [v, p] = readVarint(buf, pos);
        f.varint = v;
        pos = p;
        break;
      }
      case 1:
        f.bytes = buf.subarray(pos, pos + 8);
        pos += 8;
        break;
      case 2: {
        const [len, p] = readVarint(buf, pos);
        f.bytes = buf.subarray(p, p + Number(len));
        pos = p + Number(len);
        break;
      }
      case 5:
        f.bytes = buf.subarray(pos, pos + 4);
        pos += 4;
        break;
      default:
        assert.fail(`unexpected wire type ${wireType}`);
    }
    out.push(f);
  }
  assert.equal(pos, buf.length, 'message overran its buffer');
  return out;
}

/** The single length-delimited field with this number. */
function only(fields: WireField[], field: number): Buffer {
  const matches = fields.filter((f) => f.field === field);
  assert.equal(matches.length, 1, `expected exactly one field ${field}, got ${matches.length}`);
  const m = matches[0]!;
  assert.equal(m.wireType, 2, `field ${field} should be length-delimited`);
  return m.bytes!;
}

const CERT_PEM = '-----BEGIN CERTIFICATE-----\nMIIBleaf\n-----END CERTIFICATE-----\n';
const KEY_PEM = '-----BEGIN PRIVATE KEY-----\nMIIBkey\n-----END PRIVATE KEY-----\n';
const ROOT_PEM = '-----BEGIN CERTIFICATE-----\nMIIBroot\n-----END CERTIFICATE-----\n';

// ---------------------------------------------------------------------------
// (a) service definitions
// ---------------------------------------------------------------------------

describe('service definitions', () => {
  it('IstioCertificateService/CreateCertificate is unary at the Istio path', () => {
    assert.deepEqual(Object.keys(istioCaService), ['CreateCertificate']);
    const m = istioCaService.CreateCertificate;
    assert.equal(m.path, '/istio.v1.auth.IstioCertificateService/CreateCertificate');
    assert.equal(m.requestStream, false);
    assert.equal(m.responseStream, false);
    assert.equal(typeof IstioCaClient, 'function');
    assert.equal(IstioCaClient.service.CreateCertificate.path, m.path);
  });

  it('SecretDiscoveryService has StreamSecrets/DeltaSecrets (bidi) and FetchSecrets (unary)', () => {
    assert.deepEqual(Object.keys(sdsService).sort(), ['DeltaSecrets', 'FetchSecrets', 'StreamSecrets']);
    const base = '/envoy.service.secret.v3.SecretDiscoveryService';
    assert.equal(sdsService.StreamSecrets.path, `${base}/StreamSecrets`);
    assert.equal(sdsService.StreamSecrets.requestStream, true);
    assert.equal(sdsService.StreamSecrets.responseStream, true);
    assert.equal(sdsService.DeltaSecrets.path, `${base}/DeltaSecrets`);
    assert.equal(sdsService.DeltaSecrets.requestStream, true);
    assert.equal(sdsService.DeltaSecrets.responseStream, true);
    assert.equal(sdsService.FetchSecrets.path, `${base}/FetchSecrets`);
    assert.equal(sdsService.FetchSecrets.requestStream, false);
    assert.equal(sdsService.FetchSecrets.responseStream, false);
    assert.equal(typeof SdsClient, 'function');
    assert.equal(SdsClient.service.StreamSecrets.path, `${base}/StreamSecrets`);
  });
});

// ---------------------------------------------------------------------------
// (b) field numbers on the wire
// ---------------------------------------------------------------------------

describe('wire encoding', () => {
  it('IstioCertificateRequest: csr=1, validity_duration=3, metadata=4 (Struct)', () => {
    const buf = istioCaService.CreateCertificate.requestSerialize({
      csr: 'CSR',
      validity_duration: '86400',
      metadata: objectToStruct({ CertSigner: 'k8s' }),
    });
    const fields = readFields(buf);
    assert.deepEqual(
      fields.map((f) => f.tag),
      [0x0a, 0x18, 0x22],
    );
    assert.equal(buf[0], 0x0a);
    assert.equal(fields[0]!.bytes!.toString(), 'CSR');
    assert.equal(fields[1]!.varint, 86400n);
    // Struct.fields (1) is a map entry {key=1, value=2}; Value.string_value = 3.
    const entry = readFields(only(readFields(fields[2]!.bytes!), 1));
    assert.equal(only(entry, 1).toString(), 'CertSigner');
    assert.equal(only(readFields(only(entry, 2)), 3).toString(), 'k8s');
  });

  it('IstioCertificateRequest decodes hand-built bytes and ignores legacy field 2 (subject_id)', () => {
    const bytes = Buffer.from([
      0x0a, 0x03, 0x61, 0x62, 0x63, // csr = "abc"
      0x12, 0x01, 0x78, // field 2 (old subject_id) = "x": unknown, skipped
      0x18, 0x80, 0xa3, 0x05, // validity_duration = 86400
    ]);
    const req: IstioCertificateRequest = istioCaService.CreateCertificate.requestDeserialize(bytes);
    assert.deepEqual(req, { csr: 'abc', validity_duration: '86400', metadata: null });
  });

  it('IstioCertificateResponse: cert_chain=1 repeated string', () => {
    const buf = istioCaService.CreateCertificate.responseSerialize({ cert_chain: [CERT_PEM, ROOT_PEM] });
    const fields = readFields(buf);
    assert.deepEqual(
      fields.map((f) => [f.tag, f.bytes!.toString()]),
      [
        [0x0a, CERT_PEM],
        [0x0a, ROOT_PEM],
      ],
    );
  });

  it('DiscoveryRequest: version_info=1, node=2, resource_names=3, type_url=4, response_nonce=5, error_detail=6', () => {
    const buf = sdsService.StreamSecrets.requestSerialize({
      version_info: 'v1',
      node: {
        id: 'sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local',
        cluster: 'c',
        metadata: objectToStruct({ ISTIO_VERSION: '1.26.0' }),
        user_agent_name: 'envoy',
        user_agent_version: '1.34.0',
        client_features: ['xds.config.supports-resource-ttl'],
      },
      resource_names: ['default'],
      type_url: SECRET_TYPE_URL,
      response_nonce: 'n1',
      error_detail: { code: 13, message: 'bad cert' },
    });
    const fields = readFields(buf);
    assert.deepEqual(
      fields.map((f) => f.tag),
      [0x0a, 0x12, 0x1a, 0x22, 0x2a, 0x32],
    );
    assert.equal(only(fields, 5).toString(), 'n1');
    assert.equal(only(fields, 4).toString(), SECRET_TYPE_URL);
    // Node: id=1, cluster=2, metadata=3, user_agent_name=6, user_agent_version=7, client_features=10.
    const node = readFields(only(fields, 2));
    assert.deepEqual(
      node.map((f) => f.tag),
      [0x0a, 0x12, 0x1a, 0x32, 0x3a, 0x52],
    );
    // google.rpc.Status: code=1 (varint), message=2.
    const status = readFields(only(fields, 6));
    assert.deepEqual(
      status.map((f) => [f.tag, f.varint ?? f.bytes!.toString()]),
      [
        [0x08, 13n],
        [0x12, 'bad cert'],
      ],
    );

    const decoded: DiscoveryRequest = sdsService.StreamSecrets.requestDeserialize(buf);
    assert.equal(decoded.response_nonce, 'n1');
    assert.equal(decoded.node?.user_agent_version_type, 'user_agent_version');
    assert.deepEqual(structToObject(decoded.node?.metadata), { ISTIO_VERSION: '1.26.0' });
    assert.deepEqual(decoded.error_detail, { code: 13, message: 'bad cert', details: [] });
  });

  it('DiscoveryResponse carries Secrets inside Any: tls_certificate=2, validation_context=4, inline_bytes=2', () => {
    const buf = sdsService.StreamSecrets.responseSerialize({
      version_info: 'v1',
      type_url: SECRET_TYPE_URL,
      nonce: 'n1',
      resources: [
        encodeSecretAny({
          name: 'default',
          tls_certificate: {
            certificate_chain: { inline_bytes: Buffer.from(CERT_PEM) },
            private_key: { inline_bytes: Buffer.from(KEY_PEM) },
          },
        }),
        encodeSecretAny({ name: 'ROOTCA', validation_context: { trusted_ca: { inline_bytes: Buffer.from(ROOT_PEM) } } }),
      ],
    });
    const top = readFields(buf);
    assert.deepEqual(
      top.map((f) => f.tag),
      [0x0a, 0x12, 0x12, 0x22, 0x2a],
    );
    const [anyDefault, anyRoot] = top.filter((f) => f.field === 2).map((f) => readFields(f.bytes!));

    // Any: type_url=1, value=2
    assert.equal(only(anyDefault!, 1).toString(), SECRET_TYPE_URL);
    const secret = readFields(only(anyDefault!, 2));
    assert.deepEqual(
      secret.map((f) => f.tag),
      [0x0a, 0x12],
    );
    assert.equal(only(secret, 1).toString(), 'default');
    const tlsCert = readFields(only(secret, 2));
    assert.deepEqual(
      tlsCert.map((f) => f.tag),
      [0x0a, 0x12],
    );
    const chain = readFields(only(tlsCert, 1)); // certificate_chain: DataSource
    assert.deepEqual(
      chain.map((f) => f.tag),
      [0x12],
    );
    assert.equal(only(chain, 2).toString(), CERT_PEM);
    assert.equal(only(readFields(only(tlsCert, 2)), 2).toString(), KEY_PEM);

    assert.equal(only(anyRoot!, 1).toString(), SECRET_TYPE_URL);
    const rootSecret = readFields(only(anyRoot!, 2));
    assert.deepEqual(
      rootSecret.map((f) => f.tag),
      [0x0a, 0x22],
    );
    const validation = readFields(only(rootSecret, 4));
    assert.deepEqual(
      validation.map((f) => f.tag),
      [0x0a],
    ); // trusted_ca = 1
    assert.equal(only(readFields(only(validation, 1)), 2).toString(), ROOT_PEM);
  });

  it('encodeSecretAny / decodeSecretAny round-trip and reject foreign type URLs', () => {
    const any = encodeSecretAny({
      name: 'ROOTCA',
      validation_context: {
        trusted_ca: { inline_bytes: Buffer.from(ROOT_PEM) },
        crl: { filename: '/var/run/secrets/istio/crl/ca-crl.pem' },
        trust_chain_verification: 'ACCEPT_UNTRUSTED',
      },
    });
    assert.equal(any.type_url, SECRET_TYPE_URL);
    assert.ok(Buffer.isBuffer(any.value));
    const secret = decodeSecretAny(any);
    assert.equal(secret.name, 'ROOTCA');
    assert.equal(secret.type, 'validation_context');
    if (secret.type !== 'validation_context') return;
    const vc = secret.validation_context;
    assert.ok(vc);
    assert.equal(vc.trust_chain_verification, 'ACCEPT_UNTRUSTED');
    assert.equal(vc.allow_expired_certificate, false);
    assert.deepEqual(vc.verify_certificate_hash, []);
    assert.equal(vc.trusted_ca?.specifier, 'inline_bytes');
    if (vc.trusted_ca?.specifier === 'inline_bytes' && vc.trusted_ca.inline_bytes) {
      assert.ok(Buffer.isBuffer(vc.trusted_ca.inline_bytes));
      assert.equal(vc.trusted_ca.inline_bytes.toString(), ROOT_PEM);
    }
    assert.equal(vc.crl?.specifier, 'filename');
    assert.equal(vc.watched_directory, null);

    assert.throws(
      () => decodeSecretAny({ type_url: 'type.googleapis.com/envoy.api.v2.auth.Secret', value: any.value }),
      TypeError,
    );
  });

  it('objectToStruct / structToObject survive a wire round-trip', () => {
    const original: JsonObject = {
      CertSigner: '',
      n: 42.5,
      neg: -1,
      ok: true,
      nothing: null,
      list: ['a', 1, false, null, { deep: ['x'] }],
      nested: { inner: { k: 'v' }, empty: {} },
      emptyList: [],
    };
    const struct = objectToStruct({ ...original, dropped: undefined });
    assert.equal(struct.fields['CertSigner']?.kind, 'stringValue');
    assert.equal('dropped' in struct.fields, false);
    const buf = istioCaService.CreateCertificate.requestSerialize({ csr: 'x', metadata: struct });
    const decoded = istioCaService.CreateCertificate.requestDeserialize(buf);
    assert.equal(decoded.validity_duration, '0');
    // protobufjs's bundled struct.proto names Value members in camelCase (see protos.ts).
    assert.deepEqual(decoded.metadata?.fields['CertSigner'], { kind: 'stringValue', stringValue: '' });
    assert.deepEqual(decoded.metadata?.fields['nothing'], { kind: 'nullValue', nullValue: 'NULL_VALUE' });
    assert.deepEqual(structToObject(decoded.metadata), original);
    assert.deepEqual(structToObject(null), {});

    const cyclic: Record<string, JsonObject> = {};
    cyclic['self'] = cyclic as unknown as JsonObject;
    assert.throws(() => objectToStruct(cyclic), TypeError);
  });
});

// ---------------------------------------------------------------------------
// (c) real round-trip over a Unix domain socket
// ---------------------------------------------------------------------------

describe('gRPC round-trip over a Unix socket', () => {
  let dir = '';
  let address = '';
  const server = new grpc.Server();
  const seen: { caRequests: IstioCertificateRequest[]; caAuth: string[]; sdsRequests: DiscoveryRequest[] } = {
    caRequests: [],
    caAuth: [],
    sdsRequests: [],
  };

  function secretsFor(names: string[]): { type_url: string; value: Buffer }[] {
    return names.map((name) =>
      name === 'ROOTCA'
        ? encodeSecretAny({ name, validation_context: { trusted_ca: { inline_bytes: Buffer.from(ROOT_PEM) } } })
        : encodeSecretAny({
            name,
            tls_certificate: {
              certificate_chain: { inline_bytes: Buffer.from(CERT_PEM) },
              private_key: { inline_bytes: Buffer.from(KEY_PEM) },
            },
          }),
    );
  }

  const caHandlers: IstioCaHandlers = {
    CreateCertificate: (call, callback) => {
      seen.caRequests.push(call.request);
      seen.caAuth.push(String(call.metadata.get('authorization')[0] ?? ''));
      const response: Init<IstioCertificateResponse> = { cert_chain: [CERT_PEM, ROOT_PEM] };
      callback(null, response);
    },
  };

  let nonce = 0;
  const sdsHandlers: SdsHandlers = {
    StreamSecrets: (call) => {
      call.on('data', (req: DiscoveryRequest) => {
        seen.sdsRequests.push(req);
        if (req.response_nonce !== '') return; // ACK/NACK: stay silent
        call.write({
          version_info: 'v1',
          type_url: req.type_url,
          nonce: `n${++nonce}`,
          resources: secretsFor(req.resource_names),
        });
      });
      call.on('end', () => call.end());
    },
    DeltaSecrets: (call) => {
      call.on('data', (req: DeltaDiscoveryRequest) => {
        if (req.response_nonce !== '') return;
        call.write({
          system_version_info: 'v1',
          type_url: req.type_url,
          nonce: `d${++nonce}`,
          resources: req.resource_names_subscribe.map((name) => ({
            name,
            version: 'r1',
            resource: secretsFor([name])[0],
            ttl: { seconds: '30', nanos: 0 },
          })),
          removed_resources: req.resource_names_unsubscribe,
        });
      });
      call.on('end', () => call.end());
    },
    FetchSecrets: (call, callback) => {
      callback(null, {
        version_info: 'f1',
        type_url: call.request.type_url,
        nonce: 'f',
        resources: secretsFor(call.request.resource_names),
      });
    },
  };

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'meshca-wire-'));
    address = `unix:${path.join(dir, 'grpc.sock')}`;
    server.addService(istioCaService, caHandlers);
    server.addService(sdsService, sdsHandlers);
    await new Promise<void>((resolve, reject) => {
      server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
    });
  });

  after(async () => {
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    await rm(dir, { recursive: true, force: true });
  });

  it('CreateCertificate: request fields and metadata arrive, cert_chain comes back', async () => {
    const client = new IstioCaClient(address, grpc.credentials.createInsecure());
    try {
      const md = new grpc.Metadata();
      md.set('authorization', 'Bearer token-abc');
      const response = await new Promise<IstioCertificateResponse>((resolve, reject) => {
        client.CreateCertificate(
          {
            csr: '-----BEGIN CERTIFICATE REQUEST-----\nabc\n-----END CERTIFICATE REQUEST-----\n',
            validity_duration: '86400',
            metadata: objectToStruct({ CertSigner: '', ImpersonatedIdentity: 'spiffe://td/ns/a/sa/b' }),
          },
          md,
          (err, res) => (err || !res ? reject(err ?? new Error('empty response')) : resolve(res)),
        );
      });
      assert.deepEqual(response, { cert_chain: [CERT_PEM, ROOT_PEM] });
      const req = seen.caRequests.at(-1)!;
      assert.match(req.csr, /BEGIN CERTIFICATE REQUEST/);
      assert.equal(req.validity_duration, '86400');
      assert.deepEqual(structToObject(req.metadata), {
        CertSigner: '',
        ImpersonatedIdentity: 'spiffe://td/ns/a/sa/b',
      });
      assert.equal(seen.caAuth.at(-1), 'Bearer token-abc');
    } finally {
      client.close();
    }
  });

  it('StreamSecrets: subscribe, receive Secret resources, ACK', async () => {
    const client = new SdsClient(address, grpc.credentials.createInsecure());
    try {
      const stream = client.StreamSecrets();
      const node: Init<Node> = {
        id: 'sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local',
        metadata: objectToStruct({ CLUSTER_ID: 'Kubernetes' }),
        user_agent_name: 'envoy',
        client_features: ['xds.config.supports-resource-in-sotw'],
      };
      const first = new Promise<DiscoveryResponse>((resolve, reject) => {
        stream.once('data', resolve);
        stream.once('error', reject);
      });
      stream.write({ node, resource_names: ['default', 'ROOTCA'], type_url: SECRET_TYPE_URL });
      const res = await first;
      assert.equal(res.version_info, 'v1');
      assert.equal(res.type_url, SECRET_TYPE_URL);
      assert.match(res.nonce, /^n\d+$/);
      assert.equal(res.control_plane, null);
      assert.equal(res.resources.length, 2);

      const [def, root] = res.resources.map((a) => decodeSecretAny(a));
      assert.equal(def!.name, 'default');
      assert.equal(def!.type, 'tls_certificate');
      if (def!.type === 'tls_certificate') {
        const chain = def!.tls_certificate?.certificate_chain;
        assert.equal(chain?.specifier, 'inline_bytes');
        if (chain?.specifier === 'inline_bytes') assert.equal(chain.inline_bytes?.toString(), CERT_PEM);
        const key = def!.tls_certificate?.private_key;
        if (key?.specifier === 'inline_bytes') assert.equal(key.inline_bytes?.toString(), KEY_PEM);
        else assert.fail('private_key should be inline_bytes');
      }
      assert.equal(root!.name, 'ROOTCA');
      assert.equal(root!.type, 'validation_context');
      if (root!.type === 'validation_context') {
        const ca = root!.validation_context?.trusted_ca;
        if (ca?.specifier === 'inline_bytes') assert.equal(ca.inline_bytes?.toString(), ROOT_PEM);
        else assert.fail('trusted_ca should be inline_bytes');
      }

      // ACK, then half-close; the server ends the stream.
      const ended = new Promise<void>((resolve, reject) => {
        stream.on('end', resolve);
        stream.on('error', reject);
        stream.resume();
      });
      stream.write({
        version_info: res.version_info,
        resource_names: ['default', 'ROOTCA'],
        type_url: SECRET_TYPE_URL,
        response_nonce: res.nonce,
      });
      stream.end();
      await ended;

      const [subscribe, ack] = seen.sdsRequests.slice(-2);
      assert.equal(subscribe!.node?.id, node.id);
      assert.deepEqual(subscribe!.node?.client_features, ['xds.config.supports-resource-in-sotw']);
      assert.deepEqual(structToObject(subscribe!.node?.metadata), { CLUSTER_ID: 'Kubernetes' });
      assert.equal(subscribe!.response_nonce, '');
      assert.equal(subscribe!.error_detail, null);
      assert.equal(ack!.node, null);
      assert.equal(ack!.response_nonce, res.nonce);
      assert.equal(ack!.version_info, 'v1');
    } finally {
      client.close();
    }
  });

  it('DeltaSecrets and FetchSecrets round-trip', async () => {
    const client = new SdsClient(address, grpc.credentials.createInsecure());
    try {
      const stream = client.DeltaSecrets();
      const first = new Promise<DeltaDiscoveryResponse>((resolve, reject) => {
        stream.once('data', resolve);
        stream.once('error', reject);
      });
      stream.write({ type_url: SECRET_TYPE_URL, resource_names_subscribe: ['default'], resource_names_unsubscribe: ['old'] });
      const delta = await first;
      stream.end();
      stream.resume();
      assert.equal(delta.type_url, SECRET_TYPE_URL);
      assert.deepEqual(delta.removed_resources, ['old']);
      assert.equal(delta.resources.length, 1);
      const resource = delta.resources[0]!;
      assert.equal(resource.name, 'default');
      assert.equal(resource.version, 'r1');
      assert.deepEqual(resource.ttl, { seconds: '30', nanos: 0 });
      assert.equal(decodeSecretAny(resource.resource!).name, 'default');

      const fetched = await new Promise<DiscoveryResponse>((resolve, reject) => {
        client.FetchSecrets({ type_url: SECRET_TYPE_URL, resource_names: ['ROOTCA'] }, (err, res) =>
          err || !res ? reject(err ?? new Error('empty response')) : resolve(res),
        );
      });
      assert.equal(fetched.version_info, 'f1');
      assert.equal(decodeSecretAny(fetched.resources[0]!).type, 'validation_context');
    } finally {
      client.close();
    }
  });
});
