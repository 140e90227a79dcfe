/**
 * The transport floor for part 3: a grpc-js server speaking the same `CreateCertificate` over TLS, with the same
 * message sizes, that answers every call at once with a fixed chain: no authentication, no CSR check, no signing,
 * no logging. Driving it with the same load generator shows what gRPC + TLS + the load generator alone cost on
 * this machine, so the CA's own share of each request can be read off the difference.
 *
 * A second argument `http2` serves the same call without grpc-js: Node's own `http2` server with the gRPC framing
 * written out here (a 5-byte length prefix, `grpc-status` in the trailers), the same protobuf (de)serializers and
 * the same TLS. The difference between the two rows is what grpc-js's server machinery costs per call, which is
 * what a different server transport could at most buy (issue 16). It handles only what the load generator sends:
 * one unary call per stream, uncompressed; it is a measurement, not a server.
 *
 * Run by the benchmark as a child process: prints one JSON line {"grpcAddress", "rootCertPem"} when listening.
 */
import * as grpc from '@grpc/grpc-js';
import * as http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { certificateToPem, createCaCertificate, exportPrivateKeyPem, LeafIssuer, parseCertificate, spkiDer, generateKeyPairFor } from '../src/pki/index.js';
import { istioCaService, type IstioCaHandlers } from '../src/wire/protos.js';

const serverName = process.argv[2] ?? 'meshca.istio-system.svc';
const transport = process.argv[3] ?? 'grpc-js';
if (transport !== 'grpc-js' && transport !== 'http2') throw new Error(`echo-ca: transport must be grpc-js or http2, got ${transport}`);
const rootKey = generateKeyPairFor('ec-p256');
const rootDer = createCaCertificate({ subject: { organization: 'cluster.local' }, subjectKey: rootKey.privateKey, notAfter: new Date(Date.now() + 86400_000) });
const issuer = new LeafIssuer({ certificate: parseCertificate(rootDer), privateKey: rootKey.privateKey });
const servingKey = generateKeyPairFor('ec-p256');
const servingCert = issuer.issue({ spkiDer: spkiDer(servingKey.privateKey), uris: [], dnsNames: [serverName], ttlSeconds: 86400 });
// A response the size of a real one: a workload leaf and the root.
const workloadKey = generateKeyPairFor('ec-p256');
const chain = [
  certificateToPem(issuer.issue({ spkiDer: spkiDer(workloadKey.privateKey), uris: ['spiffe://cluster.local/ns/bench/sa/w0'], ttlSeconds: 86400 }).der),
  certificateToPem(rootDer),
];

function ready(port: number): void {
  process.stdout.write(`${JSON.stringify({ msg: 'echo CA ready', grpcAddress: `127.0.0.1:${port}`, rootCertPem: certificateToPem(rootDer) })}\n`);
}

const servingKeyPem = exportPrivateKeyPem(servingKey.privateKey);
const servingCertPem = certificateToPem(servingCert.der);
if (transport === 'http2') serveWithNodeHttp2();
else serveWithGrpcJs();

function serveWithGrpcJs(): void {
  const handlers: IstioCaHandlers = {
    CreateCertificate(_call, callback) {
      callback(null, { cert_chain: chain });
    },
  };
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 1024 * 1024 });
  server.addService(istioCaService, handlers);
  const credentials = grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(servingKeyPem), cert_chain: Buffer.from(servingCertPem) }]);
  server.bindAsync('127.0.0.1:0', credentials, (error, port) => {
    if (error) {
      process.stderr.write(`echo-ca: ${error.message}\n`);
      process.exit(1);
    }
    ready(port);
  });
  process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
}

function serveWithNodeHttp2(): void {
  const method = istioCaService.CreateCertificate;
  const path = method.path;
  const server = http2.createSecureServer({ key: servingKeyPem, cert: servingCertPem, ALPNProtocols: ['h2'] });
  server.on('stream', (stream, headers) => {
    if (headers[':path'] !== path) {
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(grpc.status.UNIMPLEMENTED) }, { endStream: true });
      return;
    }
    const parts: Buffer[] = [];
    stream.on('data', (part: Buffer) => parts.push(part));
    stream.on('end', () => {
      const body = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
      // One uncompressed message: flag 0, a big-endian length, then the protobuf, as grpc-js would read it.
      if (body.length < 5 || body[0] !== 0 || body.readUInt32BE(1) !== body.length - 5) {
        stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(grpc.status.INTERNAL) }, { endStream: true });
        return;
      }
      method.requestDeserialize(body.subarray(5));
      const message = method.responseSerialize({ cert_chain: chain });
      const frame = Buffer.allocUnsafe(5 + message.length);
      frame[0] = 0;
      frame.writeUInt32BE(message.length, 1);
      message.copy(frame, 5);
      stream.respond({ ':status': 200, 'content-type': 'application/grpc+proto' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(frame);
    });
  });
  server.listen(0, '127.0.0.1', () => ready((server.address() as AddressInfo).port));
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}
