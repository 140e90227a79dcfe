/**
 * `meshca bundle`: SPIFFE bundles for federation (docs/federation.md). One function per subcommand, each adding
 * itself to the `bundle` group:
 *   - `show`: this CA's bundle, read from its root files or fetched from a bundle endpoint.
 */
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { request } from 'node:https';
import * as path from 'node:path';
import type { PeerCertificate } from 'node:tls';
import type { Command } from 'commander';
import { ISTIO_CACERTS_FILES, TLS_CACERTS_FILES } from '../ca/index.js';
import { bundleOfRoots } from '../ca/federation/own-bundle.js';
import { ConfigError, readEnum } from '../config/env.js';
import {
  bundlePem,
  certificatesFromPem,
  formatSpiffeBundle,
  MAX_BUNDLE_BYTES,
  parseCertificate,
  parseSpiffeBundle,
  parseSpiffeId,
  validateTrustDomain,
  type ParsedCertificate,
  type SpiffeBundle,
} from '../pki/index.js';
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

const FETCH_TIMEOUT_MS = 10_000;

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

/** Roots to trust: PEM certificates (`--ca-file`, `--bundle`) or, `trustDomain` given, a SPIFFE bundle document (`--bundle`). */
async function trustedRoots(file: string, what: string, trustDomain?: string): Promise<string> {
  const text = await readText(file, what);
  if (trustDomain !== undefined && text.trimStart().startsWith('{')) return bundlePem(parseSpiffeBundle(trustDomain, text));
  certificatesIn(text, file);
  return text;
}

/**
 * GET of a bundle endpoint, authenticated the way its profile says: https_spiffe (the server's certificate must
 * chain to `roots` and carry exactly the SPIFFE ID `endpointId`) or https_web (Node.js's Web PKI roots or `roots`, and
 * the URL's host name). No redirect is followed, and at most MAX_BUNDLE_BYTES are read.
 */
export function fetchBundleDocument(url: URL, trust: { roots?: string; endpointId?: string }, timeoutMs: number): Promise<Buffer> {
  const { endpointId } = trust;
  const checkServerIdentity = endpointId
    ? (_host: string, cert: PeerCertificate): Error | undefined => {
        const uris = parseCertificate(cert.raw).sans.uris;
        return uris.length === 1 && uris[0] === endpointId ? undefined : new Error(`the endpoint's certificate is for ${uris.join(', ') || 'no SPIFFE ID'}, not ${endpointId} (--endpoint-id)`);
      }
    : undefined;
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'GET', ...(trust.roots ? { ca: trust.roots } : {}), ...(checkServerIdentity ? { checkServerIdentity } : {}), timeout: timeoutMs, headers: { accept: 'application/json' } }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new Error(`${url.href} answered HTTP ${res.statusCode}${res.statusCode && res.statusCode >= 300 && res.statusCode < 400 ? ' (redirects are not followed: give the final URL)' : ''}`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_BUNDLE_BYTES) {
          req.destroy(new Error(`${url.href} sent more than ${MAX_BUNDLE_BYTES} bytes: not a SPIFFE bundle`));
          return;
        }
        chunks.push(chunk);
      });
      res.on('end', () => resolve(Buffer.concat(chunks)));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${url.href} did not answer within ${timeoutMs / 1000}s`)));
    req.on('error', (error) => reject(new Error(`cannot fetch ${url.href}: ${error.message}`)));
    req.end();
  });
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
    if (flags.endpointId) {
      // https_spiffe: the endpoint's SVID is checked against a bundle of its trust domain we already hold.
      if (!flags.bundle) throw new ConfigError('--endpoint-id needs --bundle FILE: the trust domain\'s bundle (or roots, PEM) that the endpoint\'s certificate must chain to');
      if (flags.caFile) throw new ConfigError('--ca-file is for https_web endpoints; with --endpoint-id (https_spiffe) the certificate is checked against --bundle');
      let endpointTrustDomain: string;
      try {
        endpointTrustDomain = parseSpiffeId(flags.endpointId).trustDomain;
      } catch (error) {
        throw new ConfigError(`invalid --endpoint-id="${flags.endpointId}": ${(error as Error).message}`);
      }
      const trustDomain = flags.trustDomain ?? endpointTrustDomain;
      const roots = await trustedRoots(flags.bundle, '--bundle', trustDomain);
      return parseSpiffeBundle(trustDomain, await fetchBundleDocument(url, { roots, endpointId: flags.endpointId }, FETCH_TIMEOUT_MS));
    }
    if (flags.bundle) throw new ConfigError('--bundle is for https_spiffe endpoints: give --endpoint-id too, or --ca-file for an https_web endpoint');
    const roots = flags.caFile ? await trustedRoots(flags.caFile, '--ca-file') : undefined;
    return parseSpiffeBundle(flags.trustDomain ?? 'cluster.local', await fetchBundleDocument(url, roots ? { roots } : {}, FETCH_TIMEOUT_MS));
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
}
