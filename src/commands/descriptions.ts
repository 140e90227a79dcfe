/**
 * What `meshca --help` says of each command. Kept apart from the commands themselves so that listing them loads
 * none of their code: a process loads only the command it runs (the node agent never loads the CA).
 */
export const COMMAND_DESCRIPTIONS = {
  inspect: 'decode a PEM bundle (certificates, CSRs) and check whether the chain verifies',
  cacerts: "create an offline root CA and per-cluster intermediates in Istio's cacerts layout",
  agent: 'serve workload keys and certificates to Envoy over SDS on a Unix socket, renewing them from the CA',
  fetch: 'get secrets from an SDS agent like Envoy does (ACKs, follows pushes) and print or write the PEMs',
  ca: 'run the CA server: Istio-compatible CreateCertificate over gRPC/TLS, authenticated by client certs, TokenReview and JWT',
  token: 'print a development JWT for a service account, signed by the meshca dev issuer (trusted by `meshca dev`)',
  dev: 'run the whole system locally without Kubernetes: the CA with a self-signed root, a dev JWT issuer it trusts, and a node agent serving SDS',
  completion: 'print a shell completion script for bash, zsh or fish (see README: Shell completion)',
  request: 'get a workload certificate from a CA like istio-agent does (key + CSR, CreateCertificate, Istio file layout)',
  version: 'print the meshca version, the commit it was built from and the Node.js version running it',
  secrets: "list the identities a running node agent holds (serial, expiry, next renewal, streams, state) from its status server",
  decisions: "show a running CA's recent certificate decisions (issued, or refused and why), for one identity or all",
  bundle: "SPIFFE bundles for federation: `show` prints a trust domain's bundle (from its roots or its bundle endpoint), `list` and `set` the federated bundles kept",
  status: 'check from here that the CA is reachable with the right TLS name and root, roots agree, RBAC allows what the CA needs, and clocks agree',
} as const;

export type CommandName = keyof typeof COMMAND_DESCRIPTIONS;
