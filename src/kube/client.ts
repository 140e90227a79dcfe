/**
 * @kubernetes/client-node, loaded only when something talks to an API server. Importing it costs about 0.7 CPU
 * seconds (it evaluates every API group and model), more than the rest of `meshca ca` start-up together, and a CA
 * that authenticates by JWT or client certificate alone never calls Kubernetes. Modules under src/ take its types
 * with `import type` and its classes from here: `loadKubeClient()` at the edge that reads a kubeconfig, then
 * `kubeClient()` wherever a KubeConfig (which only exists after that load) is turned into API clients.
 */
import type * as KubeClientModule from '@kubernetes/client-node';

export type KubeClient = typeof KubeClientModule;

let loaded: KubeClient | undefined;
let loading: Promise<KubeClient> | undefined;

/** Loads @kubernetes/client-node once; later calls get the same module. */
export function loadKubeClient(): Promise<KubeClient> {
  loading ??= import('@kubernetes/client-node').then((module) => (loaded = module));
  return loading;
}

/**
 * The loaded module, for code that is handed a KubeConfig (so the module is loaded). Throws when nothing called
 * `loadKubeClient()` first: that is a bug in the caller, not a configuration problem.
 */
export function kubeClient(): KubeClient {
  if (!loaded) throw new Error('the Kubernetes client is not loaded yet: await loadKubeClient() before using a KubeConfig');
  return loaded;
}

/**
 * The module if it is loaded, else undefined. For `instanceof` checks on errors: an ApiException can only exist
 * once the module is loaded, so "not loaded" means "not an ApiException".
 */
export function kubeClientIfLoaded(): KubeClient | undefined {
  return loaded;
}
