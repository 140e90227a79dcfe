/**
 * `--ca-source pkcs11`: the CA key lives in a PKCS#11 token (an HSM, a cloud HSM or KMS through its PKCS#11
 * library, SoftHSM2) and never leaves it. Two modes: `intermediate` (default: the token key signs a short-lived
 * in-memory intermediate that signs workloads; intermediate.ts) and `direct` (the token signs every workload
 * certificate; direct.ts). The binding is loaded only when this source opens.
 */
import { promises as fs } from 'node:fs';
import { ConfigError } from '../../../config/env.js';
import { flagOption } from '../../../config/flags.js';
import { certificatePublicKey, certificatesFromPem, keysMatch, parseCertificate, type KeySpec, type ParsedCertificate } from '../../../pki/index.js';
import { clockFrom } from '../../../util/clock.js';
import { CaConfigError } from '../../errors.js';
import type { WorkloadSigner } from '../../signer.js';
import type { KeySourceContext, KeySourcePlugin } from '../types.js';
import { PKCS11_ENV_ONLY, PKCS11_FLAGS, readPkcs11Config, type Pkcs11SourceConfig } from './config.js';
import { Pkcs11DirectSigner } from './direct.js';
import { HsmIntermediateSource } from './intermediate.js';
import { tokenSignObserver } from './metrics.js';
import { openPkcs11Key, type Pkcs11Key } from './pkcs11-key.js';

export type { Pkcs11Flags, Pkcs11SourceConfig } from './config.js';

async function readCertificates(file: string, what: string): Promise<ParsedCertificate[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (error) {
    throw new CaConfigError(`PKCS#11: cannot read ${what} ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
  }
  try {
    const certificates = certificatesFromPem(text).map((der) => parseCertificate(der));
    if (certificates.length === 0) throw new Error('it holds no PEM CERTIFICATE block');
    return certificates;
  } catch (error) {
    throw new CaConfigError(`PKCS#11: ${what} ${file} is not usable: ${(error as Error).message}`);
  }
}

const selfSigned = (cert: ParsedCertificate): boolean => cert.subjectDer.equals(cert.issuerDer);

/** The token key's certificate, the certificates above it and the roots, from the configured files. */
async function loadCertificates(config: Pkcs11SourceConfig): Promise<{ certificate: ParsedCertificate; chain: ParsedCertificate[]; roots: ParsedCertificate[] }> {
  const [certificate, ...above] = await readCertificates(config.certFile, 'the certificate file (--pkcs11-cert)');
  const roots = config.rootsFile ? await readCertificates(config.rootsFile, 'the roots file (--pkcs11-roots)') : [certificate!, ...above].filter(selfSigned);
  if (roots.length === 0) {
    throw new CaConfigError(`PKCS#11: ${config.certFile} does not end in a self-signed root; give the trust bundle with --pkcs11-roots FILE`);
  }
  return { certificate: certificate!, chain: above.filter((c) => !roots.some((r) => r.der.equals(c.der))), roots };
}

async function openPkcs11Signer(config: Pkcs11SourceConfig, trustDomain: string, context: KeySourceContext, keySpec: KeySpec): Promise<WorkloadSigner> {
  const { certificate, chain, roots } = await loadCertificates(config);
  const observe = tokenSignObserver(context.registry);
  const { modulePath, tokenLabel, keyLabel, keyIdHex, pinFile, pinEnv } = config;
  const key: Pkcs11Key = await openPkcs11Key({
    modulePath,
    tokenLabel,
    ...(keyLabel !== undefined ? { keyLabel } : {}),
    ...(keyIdHex !== undefined ? { keyIdHex } : {}),
    ...(pinFile !== undefined ? { pinFile } : { pinEnv: pinEnv! }),
    allowExtractable: config.allowExtractable,
    ...(context.now ? { now: context.now } : {}),
    ...(observe ? { observe } : {}),
  });
  try {
    if (!keysMatch(key.publicKey, certificatePublicKey(certificate))) {
      throw new CaConfigError(
        `PKCS#11: the token key (${key.facts.kind}${key.facts.curve ? ` ${key.facts.curve}` : ''}, label ${JSON.stringify(key.facts.label)}) does not match the certificate in ${config.certFile} ("${certificate.subject}"); name the key that certificate was made for`,
      );
    }
    if (key.facts.extractable || !key.facts.sensitive) {
      context.logger.warn({ key: key.facts.label }, 'the PKCS#11 key can leave the token (extractable or not sensitive), accepted because of --pkcs11-allow-extractable');
    }
    if (config.mode === 'direct') {
      const signer = new Pkcs11DirectSigner({ key, certificate, chain, roots, logger: context.logger, ...(context.now ? { now: context.now } : {}) });
      context.logger.info({ source: 'pkcs11', mode: 'direct', key: key.facts.label, issuer: certificate.subject }, 'signing every workload certificate inside the PKCS#11 token (direct mode)');
      return withKeyClosed(signer, key);
    }
    // The intermediate this mode makes is one more CA below every certificate of the chain: a pathLen that
    // forbids it would let meshca start but fail every issuance's final check.
    for (const [index, above] of [certificate, ...chain].entries()) {
      const pathLen = above.basicConstraints?.pathLen;
      if (pathLen !== undefined && pathLen !== null && pathLen < index + 1) {
        throw new CaConfigError(
          `PKCS#11: "${above.subject}" has pathLen ${pathLen}, which leaves no room for the intermediate that --pkcs11-mode intermediate makes below the token key; use --pkcs11-mode direct, or issue the token key's certificate with a larger pathlen (meshca cacerts gives token keys pathlen 1)`,
        );
      }
    }
    const signer = await new HsmIntermediateSource({
      key,
      certificate,
      chain,
      roots,
      keySpec,
      ttlSeconds: config.intermediateTtlSeconds,
      trustDomain,
      logger: context.logger,
      ...(context.now ? { clock: clockFrom(context.now) } : {}),
    }).open();
    signer.addCleanup(() => key.close());
    return signer;
  } catch (error) {
    key.close();
    if (error instanceof CaConfigError || error instanceof ConfigError) throw error;
    throw new CaConfigError(`PKCS#11: cannot start signing with the token key: ${(error as Error).message.replace(/^PKCS#11: /, '')}`, { cause: error });
  }
}

/** The signer, whose close() also lets go of the token key. */
function withKeyClosed(signer: WorkloadSigner, key: Pkcs11Key): WorkloadSigner {
  const close = signer.close.bind(signer);
  signer.close = async () => {
    await close();
    key.close();
  };
  return signer;
}

export const pkcs11Source: KeySourcePlugin = {
  name: 'pkcs11',

  options: () => Object.values(PKCS11_FLAGS).map(flagOption),
  envOnly: PKCS11_ENV_ONLY,

  // The token's settings must be present and valid only when it signs.
  readConfig: (flags, env, _common, chosen) => (chosen ? { pkcs11: readPkcs11Config(flags, env) } : {}),

  open(config, context) {
    if (!config.pkcs11) throw new ConfigError('--ca-source pkcs11 needs --pkcs11-module, --pkcs11-token-label, --pkcs11-key-label and --pkcs11-cert');
    return openPkcs11Signer(config.pkcs11, config.trustDomain, context, config.selfSigned.keySpec);
  },
};
