/**
 * `--ca-source vault`: Vault PKI signs every workload (role mode) or an intermediate for meshca (intermediate
 * mode). Its flags and variables are VAULT_FLAGS (Istio's VAULT_* names); VAULT_TOKEN has no flag.
 */
import { ConfigError } from '../../../config/env.js';
import { flagOption } from '../../../config/flags.js';
import type { KeySourcePlugin } from '../types.js';
import { openVaultSigner, readVaultConfig, VAULT_ENV_ONLY, VAULT_FLAGS } from './vault.js';

export const vaultSource: KeySourcePlugin = {
  name: 'vault',

  options: () => Object.values(VAULT_FLAGS).map(flagOption),
  envOnly: VAULT_ENV_ONLY,

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
