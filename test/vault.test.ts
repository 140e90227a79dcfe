/**
 * Vault PKI as the key source, against the Vault stand-in (node-vault on the wire):
 *  - role mode: the real `meshca ca` has Vault sign every workload (uri_sans = the caller's SPIFFE ID, ttl,
 *    format=pem, exclude_cn_from_sans); chains verify with openssl; Vault down → UNAVAILABLE, then back to work;
 *    Vault's 400 text → INVALID_ARGUMENT; a chain that does not verify is never handed out; 403 → PERMISSION_DENIED;
 *  - intermediate mode over TLS (VAULT_TLS_ROOT_CERT): local signing with a Vault-signed intermediate, no failed
 *    request while Vault is down across the renewal point, renewal once Vault is back;
 *  - Kubernetes auth: login with the JWT file, re-login before the lease ends and after an expired token (403);
 *  - start-up problems end in one line: bad VAULT_ADDR, unreadable token/JWT files, unreachable Vault.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { promises as fs, statSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { CaError, VaultRoleSigner, readVaultConfig } from '../src/ca/index.js';
import { VaultSession } from '../src/ca/sources/vault/vault-client.js';
import { createLogger } from '../src/log.js';
import { createCsr, exportPrivateKeyPem, generateKeyPairFor, spkiDer } from '../src/pki/index.js';
import { caClient, createCertificate, opensslKeyAndCsr, type CallResult } from './ca-helpers.js';
import { eventually, expectStartFailure, sleep, startCaProcess, type StartedCa } from './keysource-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { caStartupError, cliOutcome } from './support/ca-startup.js';
import { ISTIO_WORKLOAD_ROLE, startVaultStandin, type VaultStandin } from './standins/vault.js';
import { opensslVerifyResponseChain } from './support/openssl.js';
import { makeTempDir } from './support/process.js';

const SPIFFE = 'spiffe://cluster.local/ns/default/sa/httpbin';
const logger = createLogger({ level: 'silent', format: 'json' });

function assertOk(result: CallResult): string[] {
  if (!result.ok) assert.fail(`expected OK, got ${grpc.status[result.code]}: ${result.details}`);
  return result.chain;
}

function assertStatus(result: CallResult, code: grpc.status, pattern: RegExp): void {
  if (result.ok) assert.fail(`expected ${grpc.status[code]}, got a certificate`);
  assert.equal(grpc.status[result.code], grpc.status[code], result.details);
  assert.match(result.details, pattern);
}

const subjects = (chain: string[]): string[] => chain.map((p) => new X509Certificate(p).subject ?? '');

describe('Vault PKI key source', () => {
  const temp = makeTempDir('meshca-vault-');
  let kube: KubeStandin;
  let vault: VaultStandin;
  let token: string;
  let csrPem: string;
  const processes: StartedCa[] = [];

  before(async () => {
    kube = await startKubeStandin();
    vault = await startVaultStandin({ keyType: 'ec' });
    // Workload SPIFFE IDs and the CA's own serving name are allowed; Istio CSRs carry no CN.
    vault.state.setRole('pki_int', 'istio', { ...ISTIO_WORKLOAD_ROLE });
    // Vault's default role behaviour: SANs from the CSR, uri_sans ignored.
    vault.state.setRole('pki_int', 'csr-sans', { allowed_uri_sans: ['spiffe://cluster.local/*'], require_cn: false, key_type: 'any', ttl: '1h' });
    token = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin', ttlSeconds: 3600 });
    csrPem = opensslKeyAndCsr(temp.dir, 'workload', { spiffeId: SPIFFE }).csrPem;
  });

  after(async () => {
    for (const p of processes) await p.proc.stop('SIGKILL');
    await vault?.close();
    await kube?.close();
    temp.cleanup();
  });

  const vaultRootPem = (): string => vault.state.chain('pki')[0]!;

  async function start(env: NodeJS.ProcessEnv, args: string[] = []): Promise<StartedCa> {
    const ca = await startCaProcess(['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'vault', '--ca-key-type', 'ec-p256', ...args], { VAULT_ADDR: vault.url, ...env });
    processes.push(ca);
    return ca;
  }

  test('role mode: Vault signs each workload; Vault down gives UNAVAILABLE; Vault errors pass through; bad chains are never handed out', async () => {
    const ca = await start({ VAULT_TOKEN: vault.rootToken, VAULT_SIGN_CSR_PATH: 'pki_int/sign/istio', VAULT_NAMESPACE: 'team1' }, ['--state-dir', path.join(temp.dir, 'role')]);
    assert.equal(ca.ready.keySource, 'vault');
    const client = caClient(ca.grpcAddress, vaultRootPem());
    try {
      const chain = assertOk(await createCertificate(client, { csr: csrPem, token, validitySeconds: 1800 }));
      assert.deepEqual(subjects(chain), ['', 'CN=Vault Stand-in Intermediate CA', 'CN=Vault Stand-in Root CA']);
      const verified = opensslVerifyResponseChain(chain);
      assert.ok(verified.ok, verified.output);
      assert.equal(new X509Certificate(chain[0]!).subjectAltName, `URI:${SPIFFE}`);
      const signCall = vault.state.requests.filter((r) => r.path === '/v1/pki_int/sign/istio').at(-1)!;
      assert.deepEqual(
        { uri_sans: (signCall.body as Record<string, unknown>).uri_sans, format: (signCall.body as Record<string, unknown>).format, ttl: (signCall.body as Record<string, unknown>).ttl },
        { uri_sans: SPIFFE, format: 'pem', ttl: '1800s' },
      );
      assert.equal((signCall.body as Record<string, unknown>).exclude_cn_from_sans, true);
      assert.equal(signCall.namespace, 'team1', 'VAULT_NAMESPACE travels as X-Vault-Namespace');

      // Vault unreachable: UNAVAILABLE, and the CA keeps running.
      vault.state.down = true;
      assertStatus(await createCertificate(client, { csr: csrPem, token, validitySeconds: 1800 }), grpc.status.UNAVAILABLE, /Vault is unavailable/);
      vault.state.down = false;
      assertOk(await createCertificate(client, { csr: csrPem, token, validitySeconds: 1800 }));

      // Sealed Vault (503) is unavailability too.
      vault.state.sealed = true;
      assertStatus(await createCertificate(client, { csr: csrPem, token, validitySeconds: 1800 }), grpc.status.UNAVAILABLE, /Vault is sealed/);
      vault.state.sealed = false;

      // Vault's 400 text reaches the caller as INVALID_ARGUMENT (the role does not allow this namespace).
      const otherToken = await kube.mintToken({ namespace: 'other', serviceAccount: 'app' });
      assertStatus(
        await createCertificate(client, { csr: csrPem, token: otherToken, validitySeconds: 1800 }),
        grpc.status.INVALID_ARGUMENT,
        /Vault refused to sign: URI Subject Alternative Names .* not valid for this role/,
      );

      // A chain with an issuer that does not verify is refused, not handed out.
      vault.state.corruptChain = true;
      assertStatus(await createCertificate(client, { csr: csrPem, token, validitySeconds: 1800 }), grpc.status.INTERNAL, /does not verify against the trust bundle/);
      vault.state.corruptChain = false;
      assertOk(await createCertificate(client, { csr: csrPem, token, validitySeconds: 1800 }));
    } finally {
      vault.state.down = false;
      vault.state.sealed = false;
      vault.state.corruptChain = false;
      client.close();
      await ca.proc.stop();
    }
  });

  test('role mode, in process: 403 is PERMISSION_DENIED and a role that ignores uri_sans is refused', async () => {
    const limited = vault.state.createToken({ policies: ['default'] });
    const config = readVaultConfig({}, { VAULT_ADDR: vault.url, VAULT_TOKEN: limited, VAULT_SIGN_CSR_PATH: 'pki_int/sign/istio' });
    const session = await VaultSession.open({ addr: config.addr, auth: config.auth, timeoutMs: 5000, logger });
    const signer = await VaultRoleSigner.open(session, config, { logger });
    const key = generateKeyPairFor('ec-p256').privateKey;
    const request = { csrPem: createCsr({ privateKey: key, uris: [SPIFFE] }), spkiDer: spkiDer(key), uris: [SPIFFE], ttlSeconds: 600 };
    try {
      await assert.rejects(Promise.resolve(signer.sign(request)), (error: unknown) => error instanceof CaError && error.code === 'UPSTREAM_DENIED' && /permission denied/.test(error.message));
      // A CSR whose SAN differs from the caller: Vault (use_csr_sans) certifies the CSR's SAN, meshca refuses it.
      vault.state.setPolicy('signer', ['pki_int/sign/*']);
      const allowed = vault.state.createToken({ policies: ['signer'] });
      const config2 = readVaultConfig({}, { VAULT_ADDR: vault.url, VAULT_TOKEN: allowed, VAULT_SIGN_CSR_PATH: 'pki_int/sign/csr-sans' });
      const signer2 = await VaultRoleSigner.open(await VaultSession.open({ addr: config2.addr, auth: config2.auth, timeoutMs: 5000, logger }), config2, { logger });
      try {
        const other = 'spiffe://cluster.local/ns/default/sa/other';
        await assert.rejects(
          Promise.resolve(signer2.sign({ ...request, csrPem: createCsr({ privateKey: key, uris: [other] }) })),
          (error: unknown) => error instanceof CaError && error.code === 'CERT_GEN_ERROR' && /URI SANs \[spiffe:\/\/cluster\.local\/ns\/default\/sa\/other\] but the caller is/.test(error.message),
        );
      } finally {
        await signer2.close();
      }
    } finally {
      await signer.close();
    }
  });

  test('role mode, CA impersonation: the role keeps use_csr_common_name=true, so meshca refuses CSRs naming what Vault copies', async () => {
    const key = generateKeyPairFor('ec-p256').privateKey;
    const keyFile = path.join(temp.dir, 'impostor.key');
    await fs.writeFile(keyFile, exportPrivateKeyPem(key));
    const cnCsr = execFileSync('openssl', ['req', '-new', '-key', keyFile, '-subj', '/CN=meshca.istio-system.svc'], { encoding: 'utf8' });
    // The stand-in, like Vault, certifies the CSR's CN whatever the request says (common_name is ignored).
    const direct = await fetch(`${vault.url}/v1/pki_int/sign/istio`, {
      method: 'POST',
      headers: { 'X-Vault-Token': vault.rootToken },
      body: JSON.stringify({ csr: cnCsr, format: 'pem', exclude_cn_from_sans: true, uri_sans: SPIFFE, common_name: '' }),
    });
    const issued = ((await direct.json()) as { data: { certificate: string } }).data.certificate;
    assert.equal(new X509Certificate(issued).subject, 'CN=meshca.istio-system.svc');

    const config = readVaultConfig({}, { VAULT_ADDR: vault.url, VAULT_TOKEN: vault.rootToken, VAULT_SIGN_CSR_PATH: 'pki_int/sign/istio' });
    const signer = await VaultRoleSigner.open(await VaultSession.open({ addr: config.addr, auth: config.auth, timeoutMs: 5000, logger }), config, { logger });
    try {
      const signCalls = (): number => vault.state.requests.filter((r) => r.path === '/v1/pki_int/sign/istio').length;
      const before = signCalls();
      const serialCsr = execFileSync('openssl', ['req', '-new', '-key', keyFile, '-subj', '/serialNumber=1234'], { encoding: 'utf8' });
      for (const [csr, named] of [
        [cnCsr, /a subject CN \(use_csr_common_name\)/],
        [serialCsr, /a subject serialNumber/],
        [createCsr({ privateKey: key, uris: [SPIFFE], dnsNames: ['meshca.istio-system.svc'] }), /DNS SANs/],
      ] as const) {
        await assert.rejects(
          Promise.resolve(signer.sign({ csrPem: csr, spkiDer: spkiDer(key), uris: [SPIFFE], ttlSeconds: 600 })),
          (error: unknown) => error instanceof CaError && error.code === 'CSR_ERROR' && named.test(error.message) && /which Vault would copy into the certificate/.test(error.message),
        );
      }
      assert.equal(signCalls(), before, 'no refused CSR was sent to Vault');
      // Istio's CSRs carry an empty O, which Vault ignores: still signed, with an empty subject.
      const istioLike = execFileSync('openssl', ['req', '-new', '-key', keyFile, '-subj', '/O=', '-addext', `subjectAltName=critical,URI:${SPIFFE}`], { encoding: 'utf8' });
      const signed = await signer.sign({ csrPem: istioLike, spkiDer: spkiDer(key), uris: [SPIFFE], ttlSeconds: 600 });
      assert.equal(new X509Certificate(signed.chain[0]!).subject ?? '', '');
    } finally {
      await signer.close();
    }

    // A role that writes a subject (organization): Vault's answer is outside the profile and is refused.
    vault.state.setRole('pki_int', 'with-org', { ...ISTIO_WORKLOAD_ROLE, organization: 'acme' });
    const orgConfig = readVaultConfig({}, { VAULT_ADDR: vault.url, VAULT_TOKEN: vault.rootToken, VAULT_SIGN_CSR_PATH: 'pki_int/sign/with-org' });
    const orgSigner = await VaultRoleSigner.open(await VaultSession.open({ addr: orgConfig.addr, auth: orgConfig.auth, timeoutMs: 5000, logger }), orgConfig, { logger });
    try {
      await assert.rejects(
        Promise.resolve(orgSigner.sign({ csrPem: createCsr({ privateKey: key, uris: [SPIFFE] }), spkiDer: spkiDer(key), uris: [SPIFFE], ttlSeconds: 600 })),
        (error: unknown) => error instanceof CaError && error.code === 'CERT_GEN_ERROR' && /subject "O=acme"; workload certificates carry an empty subject/.test(error.message),
      );
    } finally {
      await orgSigner.close();
    }

    // sign-verbatim copies the whole CSR: refused as a signing path.
    assert.throws(
      () => readVaultConfig({}, { VAULT_ADDR: vault.url, VAULT_TOKEN: vault.rootToken, VAULT_SIGN_CSR_PATH: 'pki_int/sign-verbatim/istio' }),
      /sign-verbatim copies the workload's CSR \(subject and SANs\) into the certificate; use <mount>\/sign\/<role>/,
    );
  });

  test('intermediate mode over TLS: workloads signed locally by a Vault-signed intermediate, no failure while Vault is down, renewal when it is back', async () => {
    const tlsVault = await startVaultStandin({ keyType: 'ec', tls: true });
    const caFile = path.join(temp.dir, 'vault-tls-ca.pem');
    await fs.writeFile(caFile, tlsVault.caPem!);
    const stateDir = path.join(temp.dir, 'intermediate');
    const ca = await startCaProcess(
      ['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'vault', '--ca-key-type', 'ec-p256', '--state-dir', stateDir, '--vault-intermediate-ttl', '12s'],
      { VAULT_ADDR: tlsVault.url, VAULT_TLS_ROOT_CERT: caFile, VAULT_TOKEN: tlsVault.rootToken, VAULT_INTERMEDIATE_PATH: 'pki/root/sign-intermediate' },
    );
    processes.push(ca);
    const rootPem = tlsVault.state.chain('pki')[0]!;
    const client = caClient(ca.grpcAddress, rootPem);
    try {
      const first = assertOk(await createCertificate(client, { csr: csrPem, token, validitySeconds: 600 }));
      assert.deepEqual(subjects(first).slice(1), ['CN=meshca intermediate CA (cluster.local)', 'CN=Vault Stand-in Root CA']);
      const verified = opensslVerifyResponseChain(first);
      assert.ok(verified.ok, verified.output);
      assert.equal(statSync(path.join(stateDir, 'vault-intermediate', 'ca-key.pem')).mode & 0o777, 0o600);
      const firstIntermediate = new X509Certificate(first[1]!).serialNumber;
      const signCalls = tlsVault.state.count('pki/root/sign-intermediate');

      // Vault goes away across the renewal point (2/3 of 12 s): every request still gets a verifying chain.
      tlsVault.state.down = true;
      const results: CallResult[] = [];
      // Past the renewal point (8 s in) but 2 s short of the intermediate's NotAfter, however long the start took on
      // a loaded machine: past NotAfter the CA rightly refuses to sign with it, which is not what is tested here.
      const until = Math.min(Date.now() + 9000, Date.parse(new X509Certificate(first[1]!).validTo) - 2000);
      while (Date.now() < until) {
        results.push(await createCertificate(client, { csr: csrPem, token, validitySeconds: 600 }));
        await sleep(200);
      }
      await ca.proc.waitForLog(/^cannot renew the intermediate CA certificate from Vault; the current one keeps signing$/, 5000);
      assert.ok(results.length >= 5, `only ${results.length} calls while Vault was down`);
      for (const result of results) {
        const chain = assertOk(result);
        assert.equal(new X509Certificate(chain[1]!).serialNumber, firstIntermediate);
      }
      const sample = opensslVerifyResponseChain(assertOk(results[results.length - 1]!));
      assert.ok(sample.ok, sample.output);

      tlsVault.state.down = false;
      await ca.proc.waitForLog(/^renewed the intermediate CA certificate from Vault$/, 10_000);
      assert.ok(tlsVault.state.count('pki/root/sign-intermediate') > signCalls);
      const renewed = assertOk(await createCertificate(client, { csr: csrPem, token, validitySeconds: 600 }));
      assert.notEqual(new X509Certificate(renewed[1]!).serialNumber, firstIntermediate);
      const check = opensslVerifyResponseChain(renewed);
      assert.ok(check.ok, check.output);
    } finally {
      tlsVault.state.down = false;
      client.close();
      await ca.proc.stop();
      await tlsVault.close();
    }
  });

  test('Kubernetes auth: login with the JWT file, re-login before the lease ends and after the token expires', async () => {
    const jwt = await kube.mintToken({ namespace: 'istio-system', serviceAccount: 'meshca', ttlSeconds: 3600 });
    const jwtFile = path.join(temp.dir, 'sa-token');
    await fs.writeFile(jwtFile, jwt);
    vault.state.acceptLoginJwt(jwt, 'meshca');
    vault.state.setK8sRole('meshca', { ttl: '6s', policies: ['default', 'meshca'] });
    const logins = (): number => vault.state.count('auth/kubernetes/login');
    const ca = await start({ VAULT_ROLE: 'meshca', VAULT_SIGN_CSR_PATH: 'pki_int/sign/istio' }, ['--vault-jwt-file', jwtFile, '--state-dir', path.join(temp.dir, 'k8s-auth')]);
    const client = caClient(ca.grpcAddress, vaultRootPem());
    try {
      const login = vault.state.requests.find((r) => r.path === '/v1/auth/kubernetes/login')!;
      assert.deepEqual(login.body, { role: 'meshca', jwt });
      assertOk(await createCertificate(client, { csr: csrPem, token, validitySeconds: 600 }));
      // Re-login at 2/3 of the 6 s lease.
      const before = logins();
      await eventually(() => (logins() > before ? true : undefined), 8000, 'a re-login before the lease ends');

      // The token Vault issued expires early (revoked by an operator, say): 403, re-login, retry, success.
      const lastToken = [...vault.state.tokens.values()].filter((t) => t.path.startsWith('auth/kubernetes')).sort((a, b) => b.createdAt - a.createdAt)[0]!;
      vault.state.expireToken(lastToken.id);
      const beforeExpiry = logins();
      assertOk(await createCertificate(client, { csr: csrPem, token, validitySeconds: 600 }));
      assert.ok(logins() > beforeExpiry, 'a 403 led to a new login');
      await ca.proc.waitForLog(/^authenticating to Vault again$/, 5000);
    } finally {
      client.close();
      await ca.proc.stop();
    }
  });

  test('start-up problems end in one clear line and exit 2 (a bad setting) or 1', async () => {
    const base = ['--kubeconfig', kube.kubeconfigPath, '--ca-source', 'vault', '--state-dir', path.join(temp.dir, 'bad')];
    // inProcess: the same start-up in this process (support/ca-startup.ts) instead of the real binary. The real
    // binary runs one refusal of the configuration and one of opening Vault: the exit code and the one line.
    // usage: a bad or missing setting, which exits 2 (a usage error); the others exit 1.
    const cases: { args?: string[]; env: NodeJS.ProcessEnv; message: RegExp; inProcess?: true; usage?: true }[] = [
      {
        env: { VAULT_ADDR: 'vault.example:8200', VAULT_TOKEN: 't', VAULT_SIGN_CSR_PATH: 'pki_int/sign/istio' },
        message: /invalid VAULT_ADDR="vault\.example:8200": expected an http:\/\/ or https:\/\/ URL/,
        usage: true,
      },
      {
        args: ['--vault-token-file', path.join(temp.dir, 'missing-token')],
        env: { VAULT_ADDR: vault.url, VAULT_SIGN_CSR_PATH: 'pki_int/sign/istio' },
        message: /cannot read the Vault token file .*missing-token: ENOENT.*\(set --vault-token-file/,
        inProcess: true,
      },
      {
        args: ['--vault-jwt-file', path.join(temp.dir, 'missing-jwt')],
        env: { VAULT_ADDR: vault.url, VAULT_ROLE: 'meshca', VAULT_SIGN_CSR_PATH: 'pki_int/sign/istio' },
        message: /cannot read the service-account token for Vault Kubernetes auth .*missing-jwt/,
        inProcess: true,
      },
      {
        env: { VAULT_ADDR: 'http://127.0.0.1:1', VAULT_TOKEN: 't', VAULT_SIGN_CSR_PATH: 'pki_int/sign/istio' },
        message: /cannot read the trust bundle from Vault at http:\/\/127\.0\.0\.1:1\/v1\/pki_int\/ca_chain: .*ECONNREFUSED/,
      },
      { env: { VAULT_ADDR: vault.url, VAULT_TOKEN: 't' }, message: /needs VAULT_SIGN_CSR_PATH .* or VAULT_INTERMEDIATE_PATH/, inProcess: true, usage: true },
    ];
    const results = await Promise.all(
      cases.map(async (c) => {
        const args = [...base, ...(c.args ?? [])];
        return c.inProcess ? cliOutcome(await caStartupError(args, c.env)) : expectStartFailure(args, c.env);
      }),
    );
    results.forEach((result, index) => {
      assert.equal(result.code, cases[index]!.usage ? 2 : 1, result.stderr);
      const lines = result.stderr.split('\n').filter((l) => l.startsWith('meshca: '));
      assert.equal(lines.length, 1, result.stderr);
      if (cases[index]!.inProcess) assert.equal(result.stderr, `${lines[0]}\n`, 'the message is one line');
      assert.match(lines[0]!, cases[index]!.message);
    });
  });
});
