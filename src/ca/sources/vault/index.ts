/**
 * `--ca-source vault`: Vault PKI signs every workload (role mode) or an intermediate for meshca (intermediate
 * mode). Also reads VAULT_ADDR, VAULT_TLS_ROOT_CERT, VAULT_NAMESPACE, VAULT_TOKEN, VAULT_AUTH_PATH, VAULT_ROLE,
 * VAULT_SIGN_CSR_PATH and VAULT_INTERMEDIATE_PATH.
 *
 * | flag                     | env                                 | default                                             |
 * |--------------------------|-------------------------------------|-----------------------------------------------------|
 * | --vault-jwt-file         |                                     | /var/run/secrets/kubernetes.io/serviceaccount/token |
 * | --vault-token-file       | (VAULT_TOKEN for the token itself)  |                                                     |
 * | --vault-intermediate-ttl |                                     | 720h                                                |
 * | --vault-bundle-refresh   |                                     | 5m                                                  |
 * | --vault-ca-chain-path    |                                     | <mount of the Vault path>/ca_chain                  |
 */
import { Option } from 'commander';
import { ConfigError } from '../../../config/env.js';
import type { KeySourcePlugin } from '../types.js';
import { DEFAULT_VAULT_JWT_FILE, openVaultSigner, readVaultConfig } from './vault.js';

export const vaultSource: KeySourcePlugin = {
  name: 'vault',

  options: () => [
    new Option('--vault-jwt-file <file>', `service-account JWT for Vault Kubernetes auth (VAULT_ROLE) (default ${DEFAULT_VAULT_JWT_FILE})`),
    new Option('--vault-token-file <file>', 'file holding the Vault token, re-read after a 403 (instead of VAULT_TOKEN)'),
    new Option('--vault-intermediate-ttl <duration>', 'lifetime requested for the Vault-signed intermediate; renewed at 2/3 (default 720h)'),
    new Option('--vault-bundle-refresh <duration>', 'how often the trust bundle is re-read from Vault (default 5m)'),
    new Option('--vault-ca-chain-path <path>', 'Vault path of the CA chain (default: <mount of VAULT_SIGN_CSR_PATH / VAULT_INTERMEDIATE_PATH>/ca_chain)'),
  ],

  // VAULT_* must be set and valid only when Vault signs.
  readConfig: (flags, env, _common, chosen) => (chosen ? { vault: readVaultConfig(flags, env) } : {}),

  async open(config, { logger, now }) {
    if (!config.vault) throw new ConfigError('--ca-source vault needs VAULT_ADDR and VAULT_SIGN_CSR_PATH or VAULT_INTERMEDIATE_PATH');
    return openVaultSigner(config.vault, {
      logger,
      keySpec: config.selfSigned.keySpec,
      trustDomain: config.trustDomain,
      stateDir: config.stateDir,
      ...(now ? { now } : {}),
    });
  },
};
