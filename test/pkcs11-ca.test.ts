/**
 * `meshca ca --ca-source pkcs11` end to end, against a real SoftHSM2 token the test initialises: a CA key made
 * inside the token (sensitive, never extractable) with its self-signed root; the CA started through the built
 * CLI in both modes; workloads authenticated by Kubernetes tokens get chains that `openssl verify -x509_strict`
 * accepts; the token taken away and brought back (SoftHSM2 reads its token directory, so renaming it is the token
 * being pulled); the start-up errors; and a search for the CA key's private half and the PIN in everything the
 * CA wrote and logged. The intermediate's renewal, failure and retry run in process on a ManualClock.
 */
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { openSigner, readKeySourceConfig } from '../src/ca/sources/index.js';
import { HsmIntermediateSource } from '../src/ca/sources/pkcs11/intermediate.js';
import { openPkcs11Key, RECONNECT_BACKOFF_MS, type Pkcs11Key } from '../src/ca/sources/pkcs11/pkcs11-key.js';
import { createLogger } from '../src/log.js';
import { caCertificateTbs, certificateFromTbs, certificateToPem, createCaCertificate, generateKeyPairFor, parseCertificate, spkiDer, type ParsedCertificate } from '../src/pki/index.js';
import { caClient, createCertificate, metricValue, opensslKeyAndCsr, type CallResult } from './ca-helpers.js';
import { eventually, expectStartFailure, sleep, startCaProcess, type StartedCa } from './keysource-helpers.js';
import { startKubeStandin, type KubeStandin } from './standins/kube.js';
import { ManualClock } from './support/manual-clock.js';
import { opensslText, opensslVerifyResponseChain } from './support/openssl.js';
import { initSoftHsmToken, makeTokenRoot, type SoftHsmToken } from './support/softhsm.js';

const SPIFFE = 'spiffe://cluster.local/ns/default/sa/httpbin';
const ROOT_LABEL = 'meshca-root';
const logger = createLogger({ level: 'silent', format: 'json' });

function assertOk(result: CallResult): string[] {
  if (!result.ok) assert.fail(`expected OK, got ${grpc.status[result.code]}: ${result.details}`);
  return result.chain;
}

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    return entry.isDirectory() ? filesUnder(full) : entry.isFile() ? [full] : [];
  });
}

describe('PKCS#11 key source: meshca ca with its key in SoftHSM2', () => {
  let token: SoftHsmToken;
  let kube: KubeStandin;
  let bearer: string;
  let csrPem: string;
  let rootPem: string;
  let rootPublicSpki: Buffer;
  const running: StartedCa[] = [];
  const tokensDir = (): string => path.join(token.dir, 'tokens');
  const pullToken = (): void => renameSync(tokensDir(), `${tokensDir()}-away`);
  const returnToken = (): void => renameSync(`${tokensDir()}-away`, tokensDir());

  const caArgs = (mode: 'intermediate' | 'direct', extra: string[] = []): string[] => [
    '--kubeconfig',
    kube.kubeconfigPath,
    '--state-dir',
    path.join(token.dir, `state-${mode}`),
    '--ca-source',
    'pkcs11',
    '--ca-key-type',
    'ec-p256',
    '--pkcs11-module',
    token.module,
    '--pkcs11-token-label',
    token.label,
    '--pkcs11-key-label',
    ROOT_LABEL,
    '--pkcs11-cert',
    path.join(token.dir, 'root-cert.pem'),
    '--pkcs11-mode',
    mode,
    ...extra,
  ];
  const caEnv = (pin = token.pin): NodeJS.ProcessEnv => ({ SOFTHSM2_CONF: token.conf, MESHCA_PKCS11_PIN: pin });

  before(async () => {
    token = initSoftHsmToken('meshca-ca');
    kube = await startKubeStandin();
    bearer = await kube.mintToken({ namespace: 'default', serviceAccount: 'httpbin', ttlSeconds: 3600 });
    csrPem = opensslKeyAndCsr(token.dir, 'workload', { spiffeId: SPIFFE }).csrPem;
    // The CA key is made in the token, and its self-signed root signed there (what `meshca cacerts root --pkcs11-*` does).
    rootPem = await makeTokenRoot(token, ROOT_LABEL, 'ec-p256');
    rootPublicSpki = new X509Certificate(rootPem).publicKey.export({ format: 'der', type: 'spki' });
    process.env.MESHCA_TEST_PIN = token.pin;
    writeFileSync(path.join(token.dir, 'root-cert.pem'), rootPem);
  });

  after(async () => {
    for (const ca of running) await ca.proc.stop('SIGKILL');
    await kube?.close();
    token?.remove();
  });

  async function start(mode: 'intermediate' | 'direct'): Promise<{ ca: StartedCa; call: () => Promise<CallResult> }> {
    const ca = await startCaProcess(caArgs(mode), caEnv());
    running.push(ca);
    // The CA's serving certificate chains to the HSM root as well.
    const client = caClient(ca.grpcAddress, rootPem);
    return { ca, call: () => createCertificate(client, { csr: csrPem, token: bearer, validitySeconds: 1800 }) };
  }

  test('intermediate mode: workloads get [leaf, in-memory intermediate, HSM root]; signing goes on while the token is away', async () => {
    const { ca, call } = await start('intermediate');
    const chain = assertOk(await call());
    assert.equal(chain.length, 3);
    assert.equal(chain[2], rootPem);
    const verified = opensslVerifyResponseChain(chain);
    assert.ok(verified.ok, verified.output);
    const leaf = new X509Certificate(chain[0]!);
    assert.equal(leaf.subjectAltName, `URI:${SPIFFE}`);
    assert.match(new X509Certificate(chain[1]!).subject, /meshca intermediate CA \(PKCS#11\)/);
    assert.ok(leaf.checkIssued(new X509Certificate(chain[1]!)));
    const started = ca.proc.records.find((r) => r.msg === 'signing workloads with an intermediate CA signed by the PKCS#11 token key (intermediate mode)');
    assert.ok(started, 'the start-up line names the mode');
    assert.equal(started.intermediate, new X509Certificate(chain[1]!).serialNumber.toLowerCase().padStart(32, '0'));

    pullToken();
    try {
      // The token is needed again only at renewal (48 h away by default): issuance does not notice.
      const whileAway = assertOk(await call());
      assert.ok(opensslVerifyResponseChain(whileAway).ok);
    } finally {
      returnToken();
    }
  });

  test('direct mode: every leaf signed inside the token; UNAVAILABLE while it is away, signing again once it is back', async () => {
    const { ca, call } = await start('direct');
    const chain = assertOk(await call());
    assert.equal(chain.length, 2, 'direct mode: [leaf, root]');
    const verified = opensslVerifyResponseChain(chain);
    assert.ok(verified.ok, verified.output);
    assert.equal(new X509Certificate(chain[0]!).subjectAltName, `URI:${SPIFFE}`);
    assert.ok(ca.proc.records.some((r) => r.msg === 'signing every workload certificate inside the PKCS#11 token (direct mode)'));

    pullToken();
    let away: CallResult;
    try {
      away = await call();
      assert.equal(away.ok, false);
      if (!away.ok) {
        assert.equal(grpc.status[away.code], grpc.status[grpc.status.UNAVAILABLE], away.details);
        assert.match(away.details, /PKCS#11/);
      }
      const again = await call();
      assert.equal(again.ok ? 'OK' : grpc.status[again.code], 'UNAVAILABLE', 'still away: still UNAVAILABLE');
    } finally {
      returnToken();
    }
    // Reconnection is tried at most once per RECONNECT_BACKOFF_MS; once back, the next calls are signed again.
    const back = await eventually(
      async () => {
        const result = await call();
        return result.ok ? result.chain : undefined;
      },
      10_000 + RECONNECT_BACKOFF_MS,
      'signing after the token came back',
    );
    assert.ok(opensslVerifyResponseChain(back).ok);
    // The token's signatures and its outage are counted.
    const metrics = await (await fetch(`http://${String(ca.ready.monitoringAddress)}/metrics`)).text();
    assert.ok(metricValue(metrics, 'meshca_pkcs11_sign_duration_seconds_count', { result: 'ok' }) >= 2, 'signatures counted');
    assert.ok(metricValue(metrics, 'meshca_pkcs11_sign_duration_seconds_count', { result: 'unavailable' }) >= 1, 'the outage counted');
  });

  test('start-up errors are one line each: wrong PIN, no such key, a certificate of another key, no such module, a pathLen 0 certificate, no such token', async () => {
    const other = generateKeyPairFor('ec-p256');
    const otherCert = certificateToPem(createCaCertificate({ subject: { commonName: 'not the token key' }, subjectKey: other.privateKey, notAfter: new Date(Date.now() + 86400_000) }));
    writeFileSync(path.join(token.dir, 'other-cert.pem'), otherCert);
    // The token key's own root again, but with pathLen 0: no room for intermediate mode's intermediate below it.
    const key = await openPkcs11Key({ modulePath: token.module, tokenLabel: token.label, keyLabel: ROOT_LABEL, pinEnv: 'MESHCA_TEST_PIN' });
    try {
      const { tbs, profile } = caCertificateTbs({ subject: { commonName: 'pathlen 0 root' }, subjectKey: key.publicKey, notAfter: new Date(Date.now() + 86400_000), pathLen: 0 }, key.publicKey);
      writeFileSync(path.join(token.dir, 'pathlen0-cert.pem'), certificateToPem(certificateFromTbs(tbs, profile.algorithmIdentifier, await key.sign(profile.hash, tbs))));
    } finally {
      key.close();
    }
    // Through the built CLI: the line a user sees and the exit code.
    const cases: { args: string[]; env?: NodeJS.ProcessEnv; message: RegExp }[] = [
      { args: caArgs('direct', ['--pkcs11-cert', path.join(token.dir, 'other-cert.pem')]), message: /^meshca: PKCS#11: the token key \(ec P-256, label "meshca-root"\) does not match the certificate in .*other-cert\.pem \("CN=not the token key"\)/ },
      // Last: SoftHSM2 rewrites its token file after a failed login, and a process starting meanwhile may not see the token.
      { args: caArgs('intermediate'), env: caEnv('000000'), message: /^meshca: PKCS#11: login to token "meshca-ca" failed: wrong PIN$/ },
    ];
    for (const { args, env, message } of cases) {
      const { code, stderr } = await expectStartFailure(args, env ?? caEnv());
      assert.equal(code, 1);
      assert.equal(stderr.split('\n').length, 1, stderr);
      assert.match(stderr, message);
    }
    // The rest in process, through the same settings reader and key-source opening as `meshca ca`.
    process.env.MESHCA_PKCS11_PIN = token.pin;
    const flags = (overrides: Record<string, string>) => ({
      caSource: 'pkcs11',
      stateDir: path.join(token.dir, 'state-refusals'),
      pkcs11Module: token.module,
      pkcs11TokenLabel: token.label,
      pkcs11KeyLabel: ROOT_LABEL,
      pkcs11Cert: path.join(token.dir, 'root-cert.pem'),
      ...overrides,
    });
    const refusals: { overrides: Record<string, string>; message: RegExp }[] = [
      { overrides: { pkcs11KeyLabel: 'nope' }, message: /^PKCS#11: no private key with label "nope" in token "meshca-ca"$/ },
      { overrides: { pkcs11Module: '/nonexistent/libpkcs11.so' }, message: /^PKCS#11: cannot load the module \/nonexistent\/libpkcs11\.so/ },
      { overrides: { pkcs11Cert: path.join(token.dir, 'pathlen0-cert.pem') }, message: /"CN=pathlen 0 root" has pathLen 0, which leaves no room for the intermediate/ },
      { overrides: { pkcs11TokenLabel: 'no-such-token' }, message: /^PKCS#11: no token labelled "no-such-token" in / },
    ];
    for (const { overrides, message } of refusals) {
      const config = readKeySourceConfig(flags(overrides), { MESHCA_PKCS11_PIN: token.pin });
      await assert.rejects(openSigner(config, logger), (error: Error) => {
        assert.equal(error.name, 'CaConfigError');
        assert.doesNotMatch(error.message, /\n/);
        assert.match(error.message, message);
        return true;
      });
    }
    // A setting missing is a usage error, named with its variable.
    assert.throws(() => readKeySourceConfig(flags({ pkcs11Cert: '' }), { MESHCA_PKCS11_PIN: 'x' }), /--ca-source pkcs11 needs --pkcs11-cert \(or MESHCA_PKCS11_CERT\)/);
  });

  test('no trace of the CA key or the PIN: no PEM private key on disk is the token key, and no log line holds the PIN', () => {
    const written = filesUnder(token.dir).filter((file) => !file.startsWith(`${tokensDir()}${path.sep}`));
    for (const file of written) {
      const text = readFileSync(file, 'latin1');
      for (const block of text.match(/-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----/g) ?? []) {
        const found = createPublicKey(createPrivateKey(block)).export({ format: 'der', type: 'spki' });
        assert.ok(!found.equals(rootPublicSpki), `${file} holds the CA key`);
      }
    }
    for (const ca of running) {
      for (const line of ca.proc.lines) {
        assert.ok(!line.includes(token.pin), `a log line holds the PIN: ${line}`);
        assert.ok(!/PRIVATE KEY/.test(line), `a log line holds a private key: ${line}`);
      }
    }
    // Nothing of meshca's was written in the state directories: the intermediate's key lives in memory only.
    for (const mode of ['intermediate', 'direct']) {
      const dir = path.join(token.dir, `state-${mode}`);
      const files = (() => {
        try {
          return statSync(dir).isDirectory() ? filesUnder(dir) : [];
        } catch {
          return [];
        }
      })();
      assert.deepEqual(files.filter((f) => /key/i.test(path.basename(f))), [], `no key file in ${dir}`);
    }
  });

  test('intermediate renewal on a ManualClock: renewed at 2/3, a failed renewal keeps the current one signing and is retried until the token is back', async () => {
    const clock = new ManualClock(Date.now());
    const key: Pkcs11Key = await openPkcs11Key({ modulePath: token.module, tokenLabel: token.label, keyLabel: ROOT_LABEL, pinEnv: 'MESHCA_TEST_PIN', now: () => clock.now() });
    const root = parseCertificate(new X509Certificate(rootPem).raw);
    const source = new HsmIntermediateSource({ key, certificate: root, chain: [], roots: [root], keySpec: 'ec-p256', ttlSeconds: 3 * 3600, trustDomain: 'cluster.local', logger, clock });
    const signer = await source.open();
    try {
      const serialOf = (): string => signer.current().signingCert.serialHex;
      const notAfterOf = (): number => signer.current().signingCert.notAfter.getTime();
      const first = serialOf();
      const due = source.renewalDue!;
      assert.ok(Math.abs(due - (clock.now() + 2 * 3600_000)) < 2000, 'due at 2/3 of a 3 h intermediate');
      await clock.advanceTo(due - 1000);
      assert.equal(serialOf(), first, 'not renewed before it is due');
      await clock.advanceTo(due);
      await eventually(() => (serialOf() !== first ? true : undefined), 5000, 'the renewal');
      const second = serialOf();

      pullToken();
      let signedWhileAway: ParsedCertificate | undefined;
      try {
        await clock.advanceTo(source.renewalDue!);
        await eventually(() => source.lastError, 5000, 'a failed renewal');
        assert.match(source.lastError!, /PKCS#11/);
        assert.equal(serialOf(), second, 'the current intermediate stays');
        const leafKey = generateKeyPairFor('ec-p256');
        const leaf = await signer.sign({ csrPem: '', spkiDer: spkiDer(leafKey.publicKey), uris: [SPIFFE], ttlSeconds: 600, now: clock.now() });
        signedWhileAway = parseCertificate(leaf.leafDer);
        assert.ok(notAfterOf() > clock.now(), 'an hour of signing left at the failed renewal');
      } finally {
        returnToken();
      }
      assert.equal(signedWhileAway.issuerDer.equals(signer.current().signingCert.subjectDer), true);
      // Retries back off (1 s, 2 s, ...); the token answers again after the key's reconnection backoff.
      for (let i = 0; i < 10 && serialOf() === second; i++) {
        await clock.advance(Math.max(RECONNECT_BACKOFF_MS, 2000) * 2);
        await sleep(20);
      }
      assert.notEqual(serialOf(), second, 'renewed once the token was back');
      assert.equal(source.lastError, undefined);
    } finally {
      await signer.close();
      key.close();
    }
  });

  test('intermediate mode with RSA-3072 and P-384 token keys: intermediates and leaves that openssl verifies', async () => {
    for (const spec of ['rsa-3072', 'ec-p384'] as const) {
      const label = `root-${spec}`;
      const pem = await makeTokenRoot(token, label, spec);
      const key = await openPkcs11Key({ modulePath: token.module, tokenLabel: token.label, keyLabel: label, pinEnv: 'MESHCA_TEST_PIN' });
      const root = parseCertificate(new X509Certificate(pem).raw);
      const signer = await new HsmIntermediateSource({ key, certificate: root, chain: [], roots: [root], keySpec: 'ec-p256', ttlSeconds: 3600, trustDomain: 'cluster.local', logger }).open();
      try {
        const leafKey = generateKeyPairFor('ec-p256');
        const signed = await signer.sign({ csrPem: '', spkiDer: spkiDer(leafKey.publicKey), uris: [SPIFFE], ttlSeconds: 600 });
        assert.equal(signed.chain.length, 3);
        const verified = opensslVerifyResponseChain(signed.chain);
        assert.ok(verified.ok, `${spec}: ${verified.output}`);
        assert.match(opensslText(signed.chain[1]!), spec === 'rsa-3072' ? /Signature Algorithm: sha256WithRSAEncryption/ : /Signature Algorithm: ecdsa-with-SHA384/);
      } finally {
        await signer.close();
        key.close();
      }
    }
  });
});
