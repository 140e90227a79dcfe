/**
 * `meshca request`: get a workload certificate from a CA the way istio-agent does — generate a key and a CSR,
 * call CreateCertificate over TLS with `authorization: Bearer <token>`, `clusterid` and `CertSigner` metadata, and
 * write Istio's file layout (cert-chain.pem, key.pem 0600, root-cert.pem).
 */
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Command } from 'commander';
import { readDuration } from '../config/env.js';
import {
  certificatesFromPem,
  createCsr,
  exportPrivateKeyPem,
  generateKeyPairForAsync,
  parseCertificate,
  parseKeySpec,
  spkiDer,
  verifyChain,
  WorkloadId,
} from '../pki/index.js';
import { parseServiceAccountUsername } from '../authn/types.js';
import { writeFileAtomic } from '../util/fs.js';
import { caChannelCredentials } from '../wire/ca-credentials.js';
import { diagnoseCaTls, isConnectionFailure } from '../wire/ca-tls-diagnosis.js';
import { IstioCaClient, objectToStruct, type IstioCertificateResponse } from '../wire/protos.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

interface RequestFlags {
  caAddr: string;
  tokenFile?: string;
  rootCert?: string;
  out: string;
  serverName?: string;
  ttl: string;
  keyType: string;
  clusterId: string;
  trustDomain: string;
  identity?: string;
  impersonate?: string;
  plaintext?: boolean;
  timeout: string;
}

/** The SPIFFE ID a token's `sub` claim stands for, like istio-agent derives its own identity (best effort). */
function identityFromToken(token: string, trustDomain: string): string | undefined {
  try {
    const claims = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { sub?: unknown };
    const account = typeof claims.sub === 'string' ? parseServiceAccountUsername(claims.sub) : null;
    return account ? WorkloadId.of({ trustDomain, ...account }).uri : undefined;
  } catch {
    return undefined;
  }
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (error) {
    throw new Error(`cannot read ${what} ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

export function registerRequestCommand(program: Command): void {
  program
    .command('request')
    .description(COMMAND_DESCRIPTIONS.request)
    .requiredOption('--ca-addr <host:port>', 'address of the CA gRPC API')
    .option('--token-file <file>', 'bearer token (e.g. from `meshca token` or a projected service-account token)')
    .option('--root-cert <file>', 'PEM roots that the CA serving certificate must chain to (required unless --plaintext)')
    .option('--out <dir>', 'directory for cert-chain.pem, key.pem and root-cert.pem', '.')
    .option('--server-name <name>', 'TLS server name to verify instead of the host of --ca-addr (a DNS SAN of the CA certificate; its CN is never accepted)')
    .option('--ttl <duration>', 'requested certificate lifetime (validity_duration)', '24h')
    .option('--key-type <type>', 'key type: ec-p256 | ec-p384 | rsa-2048 | rsa-3072 | rsa-4096', 'ec-p256')
    .option('--cluster-id <id>', 'value of the clusterid header', 'Kubernetes')
    .option('--trust-domain <domain>', 'trust domain for the CSR SAN derived from the token', 'cluster.local')
    .option('--identity <spiffe-id>', 'SPIFFE ID to put in the CSR SAN (the CA writes the identity it authenticated anyway)')
    .option('--impersonate <spiffe-id>', 'ask for another identity with ImpersonatedIdentity metadata (trusted node agents only)')
    .option('--plaintext', 'connect without TLS (only for a CA started with --plaintext)')
    .option('--timeout <duration>', 'deadline of the call', '30s')
    .action(async (flags: RequestFlags) => {
      const ttlSeconds = readDuration(flags.ttl, {}, { flag: '--ttl' }, 86400, { min: 0 });
      const timeoutSeconds = readDuration(flags.timeout, {}, { flag: '--timeout' }, 30, { min: 1 });
      const keySpec = parseKeySpec(flags.keyType);
      if (!flags.plaintext && !flags.rootCert) throw new Error('--root-cert is required to verify the CA (or use --plaintext against a plaintext CA)');
      const token = flags.tokenFile ? (await readText(flags.tokenFile, 'token file')).trim() : undefined;
      const rootsPem = flags.rootCert ? await readText(flags.rootCert, 'root certificate file') : undefined;

      const keys = await generateKeyPairForAsync(keySpec);
      const identity = flags.identity ?? (token ? identityFromToken(token, flags.trustDomain) : undefined);
      const csrPem = createCsr({ privateKey: keys.privateKey, uris: identity ? [identity] : [] });

      const options: grpc.ChannelOptions = {};
      if (flags.serverName) {
        options['grpc.ssl_target_name_override'] = flags.serverName;
        options['grpc.default_authority'] = flags.serverName;
      }
      const credentials = flags.plaintext ? grpc.credentials.createInsecure() : caChannelCredentials(Buffer.from(rootsPem!));
      const client = new IstioCaClient(flags.caAddr, credentials, options);
      const metadata = new grpc.Metadata();
      if (token) metadata.set('authorization', `Bearer ${token}`);
      metadata.set('clusterid', flags.clusterId);
      const structFields: Record<string, string> = { CertSigner: '' };
      if (flags.impersonate) structFields.ImpersonatedIdentity = flags.impersonate;

      let response: IstioCertificateResponse;
      try {
        response = await new Promise<IstioCertificateResponse>((resolve, reject) =>
          client.CreateCertificate(
            { csr: csrPem, validity_duration: String(Math.floor(ttlSeconds)), metadata: objectToStruct(structFields) },
            metadata,
            { deadline: Date.now() + timeoutSeconds * 1000 },
            (error, value) => (error || !value ? reject(error ?? new Error('empty response')) : resolve(value)),
          ),
        );
      } catch (error) {
        const e = error as grpc.ServiceError;
        const statusName = typeof e.code === 'number' ? (grpc.status[e.code] ?? String(e.code)) : 'ERROR';
        if (e.code === grpc.status.UNAVAILABLE && !flags.plaintext && isConnectionFailure(e.details ?? '')) {
          // A failed handshake reaches us as OpenSSL's text; say which check failed and what to change.
          const diagnosis = await diagnoseCaTls({
            address: flags.caAddr,
            ...(flags.serverName ? { serverName: flags.serverName } : {}),
            rootsPem: Buffer.from(rootsPem!),
            rootsFile: flags.rootCert!,
            rootsSetting: '--root-cert',
            serverNameSetting: '--server-name',
            addressSetting: '--ca-addr',
          });
          if (diagnosis) throw new Error(diagnosis);
        }
        throw new Error(`CreateCertificate to ${flags.caAddr} failed: ${statusName}: ${e.details ?? e.message}`);
      } finally {
        client.close();
      }

      const chain = response.cert_chain;
      if (chain.length < 2) throw new Error(`the CA returned ${chain.length} certificate(s); expected the leaf and at least the root`);
      const leaf = parseCertificate(certificatesFromPem(chain[0]!)[0]!);
      if (!leaf.spkiDer.equals(spkiDer(keys.privateKey))) throw new Error('the issued certificate does not carry the public key of our CSR');
      const intermediates = chain.slice(1, -1).flatMap((pem) => certificatesFromPem(pem)).map(parseCertificate);
      const roots = certificatesFromPem(chain[chain.length - 1]!).map(parseCertificate);
      verifyChain(leaf, { intermediates, roots });

      await fs.mkdir(flags.out, { recursive: true, mode: 0o700 });
      const files = {
        chain: path.join(flags.out, 'cert-chain.pem'),
        key: path.join(flags.out, 'key.pem'),
        root: path.join(flags.out, 'root-cert.pem'),
      };
      await writeFileAtomic(files.key, exportPrivateKeyPem(keys.privateKey), 0o600);
      await writeFileAtomic(files.chain, chain.slice(0, -1).join(''), 0o644);
      await writeFileAtomic(files.root, chain[chain.length - 1]!, 0o644);
      process.stdout.write(
        [
          `issued ${leaf.sans.uris.join(', ') || '(no URI SAN)'}`,
          `  serial     ${leaf.serialHex}`,
          `  not after  ${leaf.notAfter.toISOString()}`,
          `  wrote      ${files.chain}, ${files.key} (0600), ${files.root}`,
          '',
        ].join('\n'),
      );
    });
}
