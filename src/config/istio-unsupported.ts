/**
 * Istio's variables that meshca does NOT implement, in one place. An istio-agent's or istiod's environment often
 * carries over into meshca's manifests; a variable meshca silently ignored would look like it worked. At start-up
 * `meshca agent` and `meshca ca` log one warning for each of these that is set, saying it is ignored and what to
 * do instead. (The variables meshca does implement are its flags' `env` names, shown in `--help`.)
 *
 * Names checked against istio/istio: pilot/cmd/pilot-agent (agent), pilot/pkg/features and
 * pilot/pkg/bootstrap/istio_ca.go (istiod).
 */
import type { Command } from 'commander';
import type { Logger } from '../log.js';
import type { Env } from './env.js';

export interface UnsupportedIstioVariable {
  readonly env: string;
  /** What to do instead, as the end of "X is set but meshca ignores it: <instead>". */
  readonly instead: string;
}

/** Istio agent (pilot-agent) variables `meshca agent` ignores. */
export const UNSUPPORTED_AGENT_VARIABLES: readonly UnsupportedIstioVariable[] = [
  { env: 'JWT_POLICY', instead: 'the token comes from --token-file (sidecar mode) or from each workload over SDS (node mode); first-party JWTs are not supported' },
  { env: 'PROV_CERT', instead: 'provisioned certificates (VM bootstrap) are not supported; authenticate with a service-account token' },
  { env: 'FILE_MOUNTED_CERTS', instead: 'serve mounted certificates as file-cert:/file-root: SDS resources (--file-resource-dirs)' },
  { env: 'CA_PROVIDER', instead: "meshca speaks Istio's CA protocol (Citadel) only; point CA_ADDR at the CA" },
  { env: 'PILOT_CERT_PROVIDER', instead: "the CA's TLS is verified against --ca-root-cert (CA_ROOT_CA)" },
  { env: 'XDS_ROOT_CA', instead: 'meshca serves no XDS; the root that verifies the CA is --ca-root-cert (CA_ROOT_CA)' },
  { env: 'CREDENTIAL_FETCHER_TYPE', instead: 'only Kubernetes service-account tokens are sent to the CA' },
  { env: 'USE_TOKEN_FOR_CSR', instead: 'every CSR is sent with the workload token already' },
  { env: 'SECRET_ROTATION_CHECK_INTERVAL', instead: 'each certificate is renewed when SECRET_GRACE_PERIOD_RATIO of its lifetime is left, no polling' },
];

/** istiod variables `meshca ca` ignores. */
export const UNSUPPORTED_CA_VARIABLES: readonly UnsupportedIstioVariable[] = [
  { env: 'EXTERNAL_CA', instead: 'choose the signer with --ca-source (MESHCA_CA_SOURCE): self-signed, cacerts or vault' },
  { env: 'K8S_SIGNER', instead: 'Kubernetes CSR signers are not supported; use --ca-source cacerts or vault' },
  { env: 'PILOT_CERT_PROVIDER', instead: 'the serving certificate is always issued by meshca itself (--server-dns, --server-cert-ttl)' },
  { env: 'ENABLE_CA_SERVER', instead: 'meshca ca always serves the CA; to stop it, do not run it' },
  { env: 'ISTIO_MULTIROOT_MESH', instead: 'the trust bundle already holds every root during a rotation; nothing to enable' },
  { env: 'AUTO_RELOAD_PLUGIN_CERTS', instead: 'the cacerts directory is always reloaded when it changes' },
  { env: 'CITADEL_ENABLE_JITTER_FOR_ROOT_CERT_ROTATOR', instead: 'the root check runs every CITADEL_SELF_SIGNED_ROOT_CERT_CHECK_INTERVAL without jitter' },
  { env: 'TOKEN_ISSUER', instead: 'trust JWT issuers with JWT_RULE (--jwt-rule)' },
  { env: 'AUDIENCE', instead: 'set the required audiences with TOKEN_AUDIENCES (--token-audiences)' },
];

/** One warning per variable of `list` set in `env`: it is ignored, and what to do instead. */
export function warnUnsupportedIstioVariables(list: readonly UnsupportedIstioVariable[], env: Env, logger: Logger): void {
  for (const variable of list) {
    if (env[variable.env] === undefined || env[variable.env] === '') continue;
    logger.warn({ variable: variable.env }, `${variable.env} is set but meshca does not implement it and ignores it: ${variable.instead}`);
  }
}

/** Names the variables of `list` in the command's `--help`, so that an operator sees them before starting it. */
export function addUnsupportedIstioHelp(command: Command, list: readonly UnsupportedIstioVariable[]): Command {
  const names = list.map((v) => v.env).join(', ');
  return command.addHelpText('after', `\nIstio variables meshca does not implement (a warning is logged when one is set):\n  ${names}`);
}
