/**
 * The CA's Kubernetes plugins, listed once. Adding one is a folder under kubernetes/ (its flags, settings, start
 * and close) and a line in KUBERNETES_PLUGINS; nothing else names a plugin.
 */
import type { Command } from 'commander';
import type { Env } from '../../config/env.js';
import { podCertificatesPlugin } from './pod-certificates/index.js';
import type { KubernetesPlugin, KubernetesPluginContext, KubernetesPluginStarter, RunningKubernetesPlugin } from './types.js';
import { clusterTrustBundlePlugin } from './cluster-trust-bundle/index.js';
import { csrSignerPlugin } from './csr-signer/index.js';

export type { KubernetesPlugin, KubernetesPluginContext, KubernetesPluginStarter, LookedUpPod, PodLookup, RunningKubernetesPlugin } from './types.js';

export const KUBERNETES_PLUGINS: readonly KubernetesPlugin[] = [csrSignerPlugin, clusterTrustBundlePlugin, podCertificatesPlugin];

/** A plugin turned on by the configuration. */
export interface ConfiguredKubernetesPlugin {
  name: string;
  start: KubernetesPluginStarter;
}

export function addKubernetesPluginOptions(command: Command): Command {
  for (const plugin of KUBERNETES_PLUGINS) for (const option of plugin.options()) command.addOption(option);
  return command;
}

/** The plugins the flags and environment turn on (each plugin's settings checked here, at start-up). */
export function readKubernetesPlugins(flags: Readonly<Record<string, unknown>>, env: Env): ConfiguredKubernetesPlugin[] {
  return KUBERNETES_PLUGINS.flatMap((plugin) => {
    const start = plugin.configure(flags, env);
    return start ? [{ name: plugin.name, start }] : [];
  });
}

/** Starts the configured plugins in order; if one fails, those started are closed and the error is thrown. */
export async function startKubernetesPlugins(plugins: readonly ConfiguredKubernetesPlugin[], context: KubernetesPluginContext): Promise<RunningKubernetesPlugin> {
  const running: RunningKubernetesPlugin[] = [];
  try {
    for (const plugin of plugins) {
      running.push(await plugin.start({ ...context, logger: context.logger.child({ plugin: plugin.name }) }));
    }
  } catch (error) {
    for (const started of running.reverse()) await started.close().catch(() => undefined);
    throw error;
  }
  return {
    async close() {
      for (const started of running.reverse()) await started.close().catch(() => undefined);
    },
  };
}
