/** `meshca_build_info`: a gauge of 1 whose labels say which build runs (version, commit, Node.js version). */
import { Gauge, type Registry } from 'prom-client';
import { buildInfo } from './build-info.js';

export const BUILD_INFO_METRIC = 'meshca_build_info';

export function registerBuildInfo(registry: Registry): void {
  const info = buildInfo();
  const gauge = new Gauge({
    name: BUILD_INFO_METRIC,
    help: 'Always 1; the labels name the running build: meshca version, the commit it was built from, and the Node.js version',
    labelNames: ['version', 'commit', 'node_version'],
    // Every process of `meshca ca --workers N` runs the same build: summing them would be wrong.
    aggregator: 'max',
    registers: [registry],
  });
  gauge.set({ version: info.version, commit: info.commit, node_version: info.nodeVersion }, 1);
}
