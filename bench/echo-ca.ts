/**
 * The transport floor for part 3: a grpc-js server speaking the same `CreateCertificate` over TLS, with the same
 * message sizes, that answers every call at once with a fixed chain: no authentication, no CSR check, no signing,
 * no logging. Driving it with the same load generator shows what gRPC + TLS + the load generator alone cost on
 * this machine, so the CA's own share of each request can be read off the difference.
 *
 * Run by the benchmark as a child process: prints one JSON line {"grpcAddress", "rootCertPem"} when listening.
 */
import * as grpc from '@grpc/grpc-js';
import { certificateToPem, createCaCertificate, exportPrivateKeyPem, LeafIssuer, parseCertificate, spkiDer, generateKeyPairFor } from '../src/pki/index.js';
import { istioCaService, type IstioCaHandlers } from '../src/wire/protos.js';

const serverName = process.argv[2] ?? 'meshca.istio-system.svc';
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

const handlers: IstioCaHandlers = {
  CreateCertificate(_call, callback) {
    callback(null, { cert_chain: chain });
  },
};
const server = new grpc.Server({ 'grpc.max_receive_message_length': 1024 * 1024 });
server.addService(istioCaService, handlers);
const credentials = grpc.ServerCredentials.createSsl(null, [
  { private_key: Buffer.from(exportPrivateKeyPem(servingKey.privateKey)), cert_chain: Buffer.from(certificateToPem(servingCert.der)) },
]);
server.bindAsync('127.0.0.1:0', credentials, (error, port) => {
  if (error) {
    process.stderr.write(`echo-ca: ${error.message}\n`);
    process.exit(1);
  }
  process.stdout.write(`${JSON.stringify({ msg: 'echo CA ready', grpcAddress: `127.0.0.1:${port}`, rootCertPem: certificateToPem(rootDer) })}\n`);
});
process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
