/**
 * `--ca-source cacerts`: a plugged-in CA directory (Istio cacerts or cert-manager layout), reloaded live.
 */
import { readString } from '../../../config/env.js';
import { flagOption, sourceOf, type FlagSpec } from '../../../config/flags.js';
import { clockFrom } from '../../../util/clock.js';
import type { KeySourcePlugin } from '../types.js';
import { cacertsDirHoldsFiles, openCacertsSigner } from './cacerts.js';

export const DEFAULT_ROOT_CA_DIR = './etc/cacerts';

const ROOT_CA_DIR_FLAG: FlagSpec = {
  flags: '--root-ca-dir <dir>',
  description: 'plugged-in CA directory, Istio cacerts or cert-manager layout, reloaded live',
  env: ['ROOT_CA_DIR'],
  defaultText: DEFAULT_ROOT_CA_DIR,
};

export const cacertsSource: KeySourcePlugin = {
  name: 'cacerts',

  options: () => [flagOption(ROOT_CA_DIR_FLAG)],

  readConfig: (flags, env) => ({ rootCaDir: readString(flags.rootCaDir, env, sourceOf(ROOT_CA_DIR_FLAG), DEFAULT_ROOT_CA_DIR) }),

  // A directory holding even part of a CA set selects cacerts, so that a broken set is reported instead of
  // silently replaced by a self-signed root.
  chosenByDefault: (config) => config.rootCaDir !== undefined && cacertsDirHoldsFiles(config.rootCaDir),

  open: (config, { logger, registry, now }) => openCacertsSigner({ dir: config.rootCaDir, logger, ...(registry ? { registry } : {}), ...(now ? { clock: clockFrom(now) } : {}) }),
};
