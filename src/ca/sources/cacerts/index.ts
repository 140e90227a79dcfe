/**
 * `--ca-source cacerts`: a plugged-in CA directory (Istio cacerts or cert-manager layout), reloaded live.
 *
 * | flag          | env         | default         |
 * |---------------|-------------|-----------------|
 * | --root-ca-dir | ROOT_CA_DIR | ./etc/cacerts   |
 */
import { Option } from 'commander';
import { readString } from '../../../config/env.js';
import { clockFrom } from '../../../util/clock.js';
import type { KeySourcePlugin } from '../types.js';
import { cacertsDirHoldsFiles, openCacertsSigner } from './cacerts.js';

export const DEFAULT_ROOT_CA_DIR = './etc/cacerts';

export const cacertsSource: KeySourcePlugin = {
  name: 'cacerts',

  options: () => [
    new Option('--root-ca-dir <dir>', `plugged-in CA directory, Istio cacerts or cert-manager layout, reloaded live (env ROOT_CA_DIR, default ${DEFAULT_ROOT_CA_DIR})`),
  ],

  readConfig: (flags, env) => ({ rootCaDir: readString(flags.rootCaDir, env, { flag: '--root-ca-dir', env: 'ROOT_CA_DIR' }, DEFAULT_ROOT_CA_DIR) }),

  // A directory holding even part of a CA set selects cacerts, so that a broken set is reported instead of
  // silently replaced by a self-signed root.
  chosenByDefault: (config) => config.rootCaDir !== undefined && cacertsDirHoldsFiles(config.rootCaDir),

  open: (config, { logger, registry, now }) => openCacertsSigner({ dir: config.rootCaDir, logger, ...(registry ? { registry } : {}), ...(now ? { clock: clockFrom(now) } : {}) }),
};
