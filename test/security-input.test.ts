/**
 * Bad input against the real `meshca ca` (TLS, TokenReview against the Kubernetes stand-in, and a JWT rule for the
 * dev issuer): every malformed CSR, out-of-range field and bad token gets one exact gRPC status and message, and
 * the next good request from the same client still gets a certificate. Cases already covered by
 * test/ca-server.test.ts (CA:true, TTL over max, the 64 KiB CSR and 64-key metadata limits, wrong audience,
 * expired tokens, an unknown clusterid) are not repeated here.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { SignJWT } from 'jose';
import { DEV_ISSUER, DevTokenIssuer } from '../src/authn/dev-issuer.js';
import type { IstioCaClient } from '../src/wire/protos.js';
import { caClient, createCertificate, opensslFacts, opensslKeyAndCsr, SERVER_NAME, startCa, type CallOptions, type CallResult, type RunningCa } from './ca-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { makeTempDir } from './support/process.js';
import { generateKeyPairFor } from '../src/pki/index.js';

const KUBE_ISSUER = 'https://kubernetes.default.svc.cluster.local';
const JWT_TRUSTS = `(JWT_RULE trusts ${DEV_ISSUER})`;
const METHOD = '/istio.v1.auth.IstioCertificateService/CreateCertificate';

function base64url(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

function pem(label: string, der: Buffer): string {
  const body = der.toString('base64').replace(/(.{64})/g, '$1\n');
  return `-----BEGIN ${label}-----\n${body}${body.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

function derOf(pemText: string): Buffer {
  return Buffer.from(pemText.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

/** A protobuf varint. */
function varint(value: number): Buffer {
  const bytes: number[] = [];
  let rest = value;
  while (rest >= 0x80) {
    bytes.push((rest & 0x7f) | 0x80);
    rest = Math.floor(rest / 128);
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

describe('bad input to meshca ca: exact statuses and messages, and the server lives on', () => {
  const temp = makeTempDir('meshca-security-input-');
  let kube: KubeStandin;
  let ca: RunningCa;
  let client: IstioCaClient;
  let issuer: DevTokenIssuer;
  let goodCsr: string;
  let goodToken: string;

  before(async () => {
    kube = await startKubeStandin();
    issuer = await DevTokenIssuer.loadOrCreate(path.join(temp.dir, 'issuer'));
    ca = await startCa(path.join(temp.dir, 'state'), ['--kubeconfig', kube.kubeconfigPath], {
      JWT_RULE: JSON.stringify({ issuer: DEV_ISSUER, jwks_file: issuer.jwksPath, audiences: ['istio-ca'] }),
    });
    client = caClient(ca.grpcAddress, ca.rootPem);
    goodCsr = opensslKeyAndCsr(temp.dir, 'good').csrPem;
    goodToken = await kube.mintToken({ namespace: 'default', serviceAccount: 'input-check', ttlSeconds: 3600 });
  });

  after(async () => {
    client?.close();
    await ca?.proc.stop('SIGKILL');
    await kube?.close();
    temp.cleanup();
  });

  /** A CSR made by OpenSSL for a key made with the given `openssl` arguments (key written with -out). */
  function opensslCsr(name: string, keyArgs: string[]): string {
    const key = path.join(temp.dir, `${name}.key`);
    execFileSync('openssl', [...keyArgs, '-out', key], { stdio: 'pipe' });
    const csr = path.join(temp.dir, `${name}.csr`);
    execFileSync('openssl', ['req', '-new', '-key', key, '-out', csr, '-subj', '/O=meshca-test'], { stdio: 'pipe' });
    return readFileSync(csr, 'utf8');
  }

  async function expectRefusal(options: CallOptions, code: grpc.status, details: string | RegExp): Promise<void> {
    const result = await createCertificate(client, options);
    assertRefused(result, code, details);
    await expectServerAlive();
  }

  async function expectServerAlive(): Promise<void> {
    const followUp = await createCertificate(client, { csr: goodCsr, token: goodToken });
    assert.ok(followUp.ok, `the follow-up good request failed: ${JSON.stringify(followUp)}`);
    assert.equal(ca.proc.child.exitCode, null, 'the CA process is still running');
  }

  function assertRefused(result: CallResult, code: grpc.status, details: string | RegExp): void {
    if (result.ok) assert.fail(`expected ${grpc.status[code]}, got a certificate`);
    assert.equal(grpc.status[result.code], grpc.status[code], result.details);
    if (typeof details === 'string') assert.equal(result.details, details);
    else assert.match(result.details, details);
  }

  /** Refused by the TokenReview of the local cluster for `reason`, and by the JWT rule for `jwtReason`. */
  const refusedToken = (reviewError: string, jwtReason: string): string =>
    `request authenticate failure: tokenreview: the token was not authenticated by cluster "Kubernetes": ${reviewError}; jwt: ${jwtReason}`;

  describe('CSRs', () => {
    test('not PEM', async () => {
      await expectRefusal(
        { csr: 'MIIBhello, this is not a certificate request', token: goodToken },
        grpc.status.INVALID_ARGUMENT,
        'CSR error: CSR is not PEM (no -----BEGIN CERTIFICATE REQUEST----- block)',
      );
    });

    test('PEM of another type (a certificate)', async () => {
      await expectRefusal({ csr: ca.rootPem, token: goodToken }, grpc.status.INVALID_ARGUMENT, 'CSR error: CSR is PEM of type "CERTIFICATE", expected "CERTIFICATE REQUEST"');
    });

    test('truncated DER', async () => {
      const truncated = pem('CERTIFICATE REQUEST', derOf(goodCsr).subarray(0, 60));
      await expectRefusal({ csr: truncated, token: goodToken }, grpc.status.INVALID_ARGUMENT, 'CSR error: CSR is not valid DER: truncated DER');
    });

    test('a signature that does not verify', async () => {
      const der = derOf(goodCsr);
      // The last bytes are the ECDSA signature's S value: flip one bit.
      der[der.length - 3] ^= 0x01;
      await expectRefusal({ csr: pem('CERTIFICATE REQUEST', der), token: goodToken }, grpc.status.INVALID_ARGUMENT, 'CSR error: CSR signature does not verify');
    });

    test('1 MiB of junk is refused by the message size limit', async () => {
      const junk = randomBytes(768 * 1024).toString('base64');
      assert.equal(junk.length, 1024 * 1024);
      await expectRefusal({ csr: junk, token: goodToken }, grpc.status.RESOURCE_EXHAUSTED, /^Received message larger than max \(\d+ vs 1048576\)$/);
    });

    test('an RSA-1024 key', async () => {
      const csr = opensslCsr('rsa1024', ['genpkey', '-algorithm', 'rsa', '-pkeyopt', 'rsa_keygen_bits:1024']);
      await expectRefusal({ csr, token: goodToken }, grpc.status.INVALID_ARGUMENT, 'CSR error: CSR key is RSA-1024; at least RSA-2048 is required');
    });

    test('an unsupported curve (secp256k1) and an unsupported algorithm (Ed25519)', async () => {
      const k1 = opensslCsr('secp256k1', ['ecparam', '-name', 'secp256k1', '-genkey', '-noout']);
      await expectRefusal({ csr: k1, token: goodToken }, grpc.status.INVALID_ARGUMENT, 'CSR error: unsupported elliptic curve 1.3.132.0.10 (use P-256 or P-384)');
      const ed = opensslCsr('ed25519', ['genpkey', '-algorithm', 'ed25519']);
      await expectRefusal({ csr: ed, token: goodToken }, grpc.status.INVALID_ARGUMENT, 'CSR error: unsupported public key algorithm 1.3.101.112 (use RSA or ECDSA)');
    });

    test('negative validity_duration means the default TTL (24h); int64 max is refused quoting the request', async () => {
      const result = await createCertificate(client, { csr: goodCsr, token: goodToken, validitySeconds: -3600 });
      assert.ok(result.ok, JSON.stringify(result));
      const facts = opensslFacts(result.chain[0]!);
      assert.equal((facts.notAfter.getTime() - facts.notBefore.getTime()) / 1000, 86400 + 120);
      const huge = await new Promise<CallResult>((resolve) => {
        const md = new grpc.Metadata();
        md.set('authorization', `Bearer ${goodToken}`);
        client.CreateCertificate({ csr: goodCsr, validity_duration: '9223372036854775807' }, md, (error, response) =>
          resolve(error ? { ok: false, code: error.code, details: error.details } : { ok: true, chain: response!.cert_chain }),
        );
      });
      assertRefused(huge, grpc.status.INVALID_ARGUMENT, 'CSR signing error (requested TTL 9223372036854775807s is greater than the max allowed TTL 90d)');
      await expectRefusal(
        { csr: goodCsr, token: goodToken, validitySeconds: Number.MAX_SAFE_INTEGER },
        grpc.status.INVALID_ARGUMENT,
        'CSR signing error (requested TTL 9007199254740991s is greater than the max allowed TTL 90d)',
      );
    });

    test('metadata with 10k keys', async () => {
      const metadata: Record<string, string> = {};
      for (let i = 0; i < 10_000; i++) metadata[`key-${i}`] = 'value';
      await expectRefusal({ csr: goodCsr, token: goodToken, metadata }, grpc.status.INVALID_ARGUMENT, 'metadata has 10000 keys; at most 64 are allowed');
    });

    test('bytes that are not UTF-8 in the CSR field', async () => {
      // Sent as raw protobuf, because a JS client can only encode valid UTF-8.
      const raw = new grpc.Client(ca.grpcAddress, grpc.credentials.createSsl(Buffer.from(ca.rootPem)), {
        'grpc.ssl_target_name_override': SERVER_NAME,
        'grpc.default_authority': SERVER_NAME,
      });
      const send = (csrBytes: Buffer): Promise<CallResult> =>
        new Promise((resolve) => {
          const body = Buffer.concat([Buffer.from([0x0a]), varint(csrBytes.length), csrBytes]);
          const md = new grpc.Metadata();
          md.set('authorization', `Bearer ${goodToken}`);
          raw.makeUnaryRequest(
            METHOD,
            (b: Buffer) => b,
            (b: Buffer) => b,
            body,
            md,
            { deadline: Date.now() + 20_000 },
            (error) => resolve(error ? { ok: false, code: error.code, details: error.details } : { ok: true, chain: [] }),
          );
        });
      try {
        const lines = goodCsr.split('\n');
        // Invalid UTF-8 (a lone continuation byte, an overlong encoding, 0xFF) inside the base64 body of a PEM CSR.
        const inBody = Buffer.concat([Buffer.from(`${lines[0]}\n${lines[1]}`), Buffer.from([0x80, 0xc0, 0xaf, 0xff]), Buffer.from(`\n${lines.slice(2).join('\n')}`)]);
        assertRefused(await send(inBody), grpc.status.INVALID_ARGUMENT, 'CSR error: PEM block "CERTIFICATE REQUEST" has a body that is not base64');
        assertRefused(await send(randomBytes(4096).fill(0xfe, 0, 1)), grpc.status.INVALID_ARGUMENT, 'CSR error: CSR is not PEM (no -----BEGIN CERTIFICATE REQUEST----- block)');
      } finally {
        raw.close();
      }
      await expectServerAlive();
    });
  });

  describe('tokens', () => {
    const claims = (issuerName: string, nowSeconds = Math.floor(Date.now() / 1000)): Record<string, unknown> => ({
      iss: issuerName,
      sub: 'system:serviceaccount:default:attacker',
      aud: ['istio-ca'],
      iat: nowSeconds,
      nbf: nowSeconds,
      exp: nowSeconds + 600,
      'kubernetes.io': { namespace: 'default', serviceaccount: { name: 'attacker', uid: 'x' } },
    });

    test('a malformed JWT', async () => {
      await expectRefusal({ csr: goodCsr, token: 'not-a-jwt' }, grpc.status.UNAUTHENTICATED, refusedToken('invalid bearer token', 'the bearer token is not a JWT'));
    });

    test('alg: none, for the Kubernetes issuer and for a trusted JWT issuer', async () => {
      const unsignedKube = `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url(claims(KUBE_ISSUER))}.`;
      await expectRefusal(
        { csr: goodCsr, token: unsignedKube },
        grpc.status.UNAUTHENTICATED,
        refusedToken('[invalid bearer token, square/go-jose: unexpected signature algorithm]', `issuer ${KUBE_ISSUER} is not trusted ${JWT_TRUSTS}`),
      );
      const unsignedDev = `${base64url({ alg: 'none', typ: 'JWT' })}.${base64url(claims(DEV_ISSUER))}.`;
      await expectRefusal(
        { csr: goodCsr, token: unsignedDev },
        grpc.status.UNAUTHENTICATED,
        refusedToken('[invalid bearer token, square/go-jose: unexpected signature algorithm]', 'Unsupported "alg" value for a JSON Web Key Set'),
      );
    });

    test('a wrong issuer', async () => {
      const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'input-check', issuer: 'https://evil.example' });
      await expectRefusal({ csr: goodCsr, token }, grpc.status.UNAUTHENTICATED, refusedToken('invalid bearer token', `issuer https://evil.example is not trusted ${JWT_TRUSTS}`));
    });

    test('a wrong signature: the trusted issuer name with another key', async () => {
      const { privateKey } = generateKeyPairFor('ec-p256');
      const forged = await new SignJWT(claims(DEV_ISSUER)).setProtectedHeader({ alg: 'ES256', kid: issuer.kid }).sign(privateKey);
      await expectRefusal(
        { csr: goodCsr, token: forged },
        grpc.status.UNAUTHENTICATED,
        refusedToken('[invalid bearer token, square/go-jose: unexpected signature algorithm]', 'the token signature does not verify'),
      );
    });

    test('not yet valid (nbf an hour ahead), for both authenticators', async () => {
      const later = Math.floor(Date.now() / 1000) + 3600;
      const kubeToken = await kube.mintToken({ namespace: 'default', serviceAccount: 'input-check', notBefore: later });
      await expectRefusal(
        { csr: goodCsr, token: kubeToken },
        grpc.status.UNAUTHENTICATED,
        refusedToken('[invalid bearer token, service account token is not valid yet]', `issuer ${KUBE_ISSUER} is not trusted ${JWT_TRUSTS}`),
      );
      const devToken = await issuer.mint({ namespace: 'default', serviceAccount: 'input-check', audiences: ['istio-ca'], ttlSeconds: 600, now: later * 1000 });
      await expectRefusal(
        { csr: goodCsr, token: devToken },
        grpc.status.UNAUTHENTICATED,
        refusedToken('[invalid bearer token, square/go-jose: unexpected signature algorithm]', 'claim "nbf" is not acceptable: "nbf" claim timestamp check failed'),
      );
    });

    test('a token of another cluster (same issuer name, that cluster\'s signing key)', async () => {
      const token = await kube.mintForeignToken({ namespace: 'default', serviceAccount: 'input-check' });
      await expectRefusal(
        { csr: goodCsr, token },
        grpc.status.UNAUTHENTICATED,
        refusedToken('[invalid bearer token, square/go-jose: error in cryptographic primitive]', `issuer ${KUBE_ISSUER} is not trusted ${JWT_TRUSTS}`),
      );
    });

    test('a legacy (Secret-based, no audience) token', async () => {
      const token = await kube.mintToken({ namespace: 'default', serviceAccount: 'input-check', legacy: true });
      await expectRefusal(
        { csr: goodCsr, token },
        grpc.status.UNAUTHENTICATED,
        refusedToken(
          `[invalid bearer token, token audiences ["${KUBE_ISSUER}"] is invalid for the target audiences ["istio-ca"]]`,
          `issuer kubernetes/serviceaccount is not trusted ${JWT_TRUSTS}`,
        ),
      );
    });

    test('a 100 KiB token is refused by the CA without a TokenReview, or by HTTP/2 when it does not compress', async () => {
      const reviews = kube.state.tokenReviewCount;
      // 'a' compresses (HPACK Huffman, 5 bits) below HTTP/2's 64 KiB header-field cap, so the CA sees it.
      assertRefused(
        await createCertificate(client, { csr: goodCsr, token: 'a'.repeat(100 * 1024) }),
        grpc.status.UNAUTHENTICATED,
        'request authenticate failure: the authorization header is 101 KiB; bearer tokens of at most 16 KiB are accepted',
      );
      assert.equal(kube.state.tokenReviewCount, reviews, 'the oversized token never reached the API server');
      await expectServerAlive();
      // Random base64url does not compress: nghttp2 resets the stream (COMPRESSION_ERROR) before gRPC sees it.
      await expectRefusal({ csr: goodCsr, token: randomBytes(75 * 1024).toString('base64url') }, grpc.status.INTERNAL, 'Received RST_STREAM with code 9');
    });
  });
});
