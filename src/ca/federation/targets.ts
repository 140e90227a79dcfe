/**
 * `--federate-with` (and MESHCA_FEDERATE_WITH): the trust domains this CA federates with and where each bundle
 * comes from. One entry is
 *
 *   <trust-domain>=<https URL>[,profile=https_web][,ca-file=<pem>]
 *   <trust-domain>=<https URL>,profile=https_spiffe,endpoint-id=spiffe://<trust-domain>/<path>[,bundle=<file>]
 *   <trust-domain>=file:<path>
 *
 * The URL ends at the first comma (a comma inside it must be written %2C); `file:` takes the rest of the entry as
 * the path. Reading the entries touches no file: whether an https_spiffe target has a bundle to start from (its
 * `bundle=` file or one persisted in the state directory) is decided when federation starts.
 */
import { parseSpiffeId, validateTrustDomain } from '../../pki/index.js';
import { ConfigError } from '../../config/env.js';
import type { EndpointProfile, FederationTarget } from './types.js';

const OPTION_KEYS = ['profile', 'ca-file', 'endpoint-id', 'bundle'] as const;
type OptionKey = (typeof OPTION_KEYS)[number];

function isOptionKey(key: string): key is OptionKey {
  return (OPTION_KEYS as readonly string[]).includes(key);
}

/** The entries of MESHCA_FEDERATE_WITH: separated by whitespace or ';'. */
export function splitFederateWithEnv(value: string): string[] {
  return value.split(/[\s;]+/).filter((entry) => entry.length > 0);
}

function parseEntry(entry: string, where: string): FederationTarget {
  function fail(message: string): never {
    throw new ConfigError(`invalid ${where}="${entry}": ${message}`);
  }
  const equals = entry.indexOf('=');
  if (equals <= 0) fail('expected <trust-domain>=<https URL>[,options] or <trust-domain>=file:<path>');
  const trustDomain = entry.slice(0, equals);
  try {
    validateTrustDomain(trustDomain);
  } catch (error) {
    fail((error as Error).message);
  }
  const rest = entry.slice(equals + 1);
  if (rest.startsWith('file:')) {
    const path = rest.slice('file:'.length);
    if (path === '') fail('file: needs a path, e.g. file:/etc/meshca/other.example.json');
    return { trustDomain, source: { kind: 'file', path } };
  }
  const [urlText = '', ...optionTexts] = rest.split(',');
  let url: URL;
  try {
    url = new URL(urlText);
  } catch {
    return fail(`"${urlText}" is not a URL; give the bundle endpoint as https://host[:port]/path, or file:<path> for a bundle file`);
  }
  if (url.protocol !== 'https:') fail(`the bundle endpoint must be an https:// URL, not ${url.protocol}//`);
  if (url.username !== '' || url.password !== '') fail('the bundle endpoint URL must not carry a user name or password');
  if (url.hash !== '') fail('the bundle endpoint URL must not have a #fragment');
  const options = new Map<OptionKey, string>();
  for (const text of optionTexts) {
    const match = /^([a-z-]+)=(.+)$/.exec(text);
    if (!match) fail(`"${text}" is not an option; options are ${OPTION_KEYS.map((k) => `${k}=...`).join(', ')}`);
    const [, key, value] = match as unknown as [string, string, string];
    if (!isOptionKey(key)) fail(`unknown option "${key}"; options are ${OPTION_KEYS.join(', ')}`);
    if (options.has(key)) fail(`option ${key} is given twice`);
    options.set(key, value);
  }
  const profileName = options.get('profile') ?? 'https_web';
  let profile: EndpointProfile;
  let initialBundlePath: string | undefined;
  if (profileName === 'https_web') {
    for (const key of ['endpoint-id', 'bundle'] as const) if (options.has(key)) fail(`${key} goes with profile=https_spiffe, not https_web`);
    const caFile = options.get('ca-file');
    profile = caFile === undefined ? { kind: 'https_web' } : { kind: 'https_web', caFile };
  } else if (profileName === 'https_spiffe') {
    if (options.has('ca-file')) fail('ca-file goes with profile=https_web; https_spiffe trusts the trust domain\'s own bundle (bundle=<file>)');
    const endpointId = options.get('endpoint-id');
    if (endpointId === undefined) return fail(`profile=https_spiffe needs endpoint-id=spiffe://${trustDomain}/<path>, the SPIFFE ID the endpoint's server presents`);
    let idTrustDomain: string;
    try {
      idTrustDomain = parseSpiffeId(endpointId).trustDomain;
    } catch (error) {
      return fail(`endpoint-id: ${(error as Error).message}`);
    }
    if (idTrustDomain !== trustDomain) fail(`endpoint-id ${endpointId} is in trust domain "${idTrustDomain}", not "${trustDomain}"`);
    profile = { kind: 'https_spiffe', endpointId };
    initialBundlePath = options.get('bundle');
  } else {
    return fail(`unknown profile "${profileName}"; expected https_web or https_spiffe`);
  }
  return { trustDomain, source: { kind: 'endpoint', url, profile, ...(initialBundlePath !== undefined ? { initialBundlePath } : {}) } };
}

/**
 * Parses the entries; `where` names the flag or variable in errors. Refuses the CA's own trust domain (and its
 * aliases): a bundle from elsewhere may not speak for it.
 */
export function parseFederationTargets(entries: readonly string[], own: { trustDomain: string; aliases?: readonly string[] }, where: string): FederationTarget[] {
  const targets: FederationTarget[] = [];
  for (const entry of entries) {
    const target = parseEntry(entry.trim(), where);
    if (target.trustDomain === own.trustDomain || own.aliases?.includes(target.trustDomain)) {
      throw new ConfigError(
        `invalid ${where}="${entry}": "${target.trustDomain}" is this CA's own trust domain${target.trustDomain === own.trustDomain ? '' : ' (an alias)'}; federate only with other trust domains`,
      );
    }
    if (targets.some((t) => t.trustDomain === target.trustDomain)) {
      throw new ConfigError(`${where} names trust domain "${target.trustDomain}" twice; give one source per trust domain`);
    }
    targets.push(target);
  }
  return targets;
}
