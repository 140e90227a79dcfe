/**
 * `meshca bundle`: SPIFFE bundles for federation (docs/federation.md). One function per subcommand, each adding
 * itself to the `bundle` group:
 *   - `show` (here): a trust domain's bundle, read from its root files or fetched from a bundle endpoint;
 *   - `list` (bundle-list.ts), `set` (bundle-set.ts): the federated bundles kept in the state directory.
 */
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { ISTIO_CACERTS_FILES, TLS_CACERTS_FILES } from '../ca/index.js';
import { readBundleFile } from '../ca/federation/bundle-store.js';
import { fetchBundle } from '../ca/federation/fetch-bundle.js';
import { bundleOfRoots } from '../ca/federation/own-bundle.js';
import { ConfigError, readEnum } from '../config/env.js';
import { bundlePem, certificatesFromPem, formatSpiffeBundle, parseCertificate, parseSpiffeId, validateTrustDomain, type ParsedCertificate, type SpiffeBundle } from '../pki/index.js';
import { registerBundleList } from './bundle-list.js';
import { registerBundleSet } from './bundle-set.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

interface ShowFlags {
  from?: string;
  endpointId?: string;
  bundle?: string;
  caFile?: string;
  cacerts?: string;
  rootCert?: string;
  trustDomain?: string;
  format: string;
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    throw new Error(`cannot read ${what} ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

function certificatesIn(pem: string, file: string): ParsedCertificate[] {
  const ders = certificatesFromPem(pem);
  if (ders.length === 0) throw new Error(`${file} holds no PEM certificate`);
  return ders.map((der, i) => {
    try {
      return parseCertificate(der);
    } catch (error) {
      throw new Error(`${file}: certificate ${i + 1} does not parse: ${(error as Error).message}`);
    }
  });
}

/** The roots a cacerts directory publishes: root-cert.pem (Istio layout) or ca.crt (cert-manager layout). */
async function cacertsRoots(dir: string): Promise<{ file: string; roots: ParsedCertificate[] }> {
  const candidates = [ISTIO_CACERTS_FILES.roots, TLS_CACERTS_FILES.ca].map((name) => path.join(dir, name));
  const file = candidates.find((candidate) => existsSync(candidate));
  if (!file) throw new Error(`${dir} holds neither ${ISTIO_CACERTS_FILES.roots} nor ${TLS_CACERTS_FILES.ca}: give the directory the CA reads (--root-ca-dir), or the roots with --root-cert`);
  return { file, roots: certificatesIn(await readText(file, 'the roots file'), file) };
}

function readUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(`invalid --from="${text}": expected an https:// URL of a SPIFFE bundle endpoint`);
  }
  if (url.protocol !== 'https:') throw new ConfigError(`invalid --from="${text}": a bundle endpoint is served over https://`);
  return url;
}

/** The bundle `show` prints, from exactly one source. */
async function showBundle(flags: ShowFlags): Promise<SpiffeBundle> {
  const sources = [flags.from && '--from', flags.cacerts && '--cacerts', flags.rootCert && '--root-cert'].filter(Boolean);
  if (sources.length !== 1) {
    throw new ConfigError(sources.length === 0 ? 'say where the bundle comes from: --cacerts DIR or --root-cert FILE (local roots), or --from URL (a bundle endpoint)' : `give only one of ${sources.join(', ')}`);
  }
  if (!flags.from && (flags.endpointId || flags.bundle || flags.caFile)) throw new ConfigError('--endpoint-id, --bundle and --ca-file are for --from URL');
  if (flags.from) {
    const url = readUrl(flags.from);
    let fetched: Promise<SpiffeBundle>;
    if (flags.endpointId) {
      // https_spiffe: the endpoint's SVID is checked against a bundle of its trust domain we already hold.
      if (!flags.bundle) throw new ConfigError("--endpoint-id needs --bundle FILE: the trust domain's bundle (SPIFFE JSON or PEM roots) that the endpoint's certificate must chain to");
      if (flags.caFile) throw new ConfigError('--ca-file is for https_web endpoints; with --endpoint-id (https_spiffe) the certificate is checked against --bundle');
      let endpointTrustDomain: string;
      try {
        endpointTrustDomain = parseSpiffeId(flags.endpointId).trustDomain;
      } catch (error) {
        throw new ConfigError(`invalid --endpoint-id="${flags.endpointId}": ${(error as Error).message}`);
      }
      const trustDomain = flags.trustDomain ?? endpointTrustDomain;
      const trusted = await readBundleFile(trustDomain, flags.bundle);
      fetched = fetchBundle(trustDomain, url, { kind: 'https_spiffe', endpointId: flags.endpointId }, trusted);
    } else {
      if (flags.bundle) throw new ConfigError('--bundle is for https_spiffe endpoints: give --endpoint-id too, or --ca-file for an https_web endpoint');
      fetched = fetchBundle(flags.trustDomain ?? 'cluster.local', url, { kind: 'https_web', ...(flags.caFile ? { caFile: flags.caFile } : {}) }, undefined, {
        caFileHint: '--ca-file <pem>',
      });
    }
    try {
      return await fetched;
    } catch (error) {
      throw new Error(`fetching ${url.href}: ${(error as Error).message}`);
    }
  }
  const trustDomain = flags.trustDomain ?? 'cluster.local';
  const { file, roots } = flags.cacerts ? await cacertsRoots(flags.cacerts) : { file: flags.rootCert!, roots: certificatesIn(await readText(flags.rootCert!, 'the roots file'), flags.rootCert!) };
  try {
    // The sequence the CA derives from these roots, so this prints what its bundle endpoint serves (but the refresh hint).
    return bundleOfRoots(trustDomain, roots);
  } catch (error) {
    throw new Error(`${file}: ${(error as Error).message}`);
  }
}

function registerBundleShow(group: Command): void {
  group
    .command('show')
    .description("print this CA's SPIFFE bundle: from its root files (--cacerts, --root-cert) or fetched from a bundle endpoint (--from)")
    .option('--cacerts <dir>', 'read the roots of a cacerts directory (root-cert.pem, or ca.crt)')
    .option('--root-cert <file>', 'read the roots from a PEM file')
    .option('--from <url>', 'fetch the bundle from a SPIFFE bundle endpoint, e.g. https://meshca.example.com:8443/')
    .option('--endpoint-id <spiffe-id>', 'https_spiffe: the SPIFFE ID the endpoint must present (needs --bundle)')
    .option('--bundle <file>', "https_spiffe: the trust domain's bundle (SPIFFE JSON or PEM roots) the endpoint's SVID must chain to")
    .option('--ca-file <file>', 'https_web: roots (PEM) to verify the endpoint with, instead of the Web PKI roots Node.js ships (and NODE_EXTRA_CA_CERTS)')
    .option('--trust-domain <domain>', 'trust domain of the bundle (default: that of --endpoint-id, else cluster.local)')
    .option('--format <format>', 'spiffe (the JSON document a bundle endpoint serves) | pem (the roots)', 'spiffe')
    .action(async (flags: ShowFlags) => {
      const format = readEnum(flags.format, {}, { flag: '--format' }, ['spiffe', 'pem'] as const, 'spiffe');
      if (flags.trustDomain !== undefined) {
        try {
          validateTrustDomain(flags.trustDomain);
        } catch (error) {
          throw new ConfigError(`invalid --trust-domain="${flags.trustDomain}": ${(error as Error).message}`);
        }
      }
      const bundle = await showBundle(flags);
      process.stdout.write(format === 'pem' ? bundlePem(bundle) : formatSpiffeBundle(bundle));
    });
}

export function registerBundleCommand(program: Command): void {
  const group = program.command('bundle').description(COMMAND_DESCRIPTIONS.bundle);
  registerBundleShow(group);
  registerBundleList(group);
  registerBundleSet(group);
}
