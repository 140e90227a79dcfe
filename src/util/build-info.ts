/**
 * What this build is: the package version, the commit it was built from (dist/build-info.json, written by
 * `npm run build`; "unknown" when running from sources without a build) and the Node.js running it. Shown by
 * `meshca version` and `meshca --version`, and exported as the `meshca_build_info` metric by the CA and the agent.
 */
import { readFileSync } from 'node:fs';

export interface BuildInfo {
  version: string;
  commit: string;
  nodeVersion: string;
}

function readJson(relative: string): Record<string, unknown> | undefined {
  try {
    const parsed: unknown = JSON.parse(readFileSync(new URL(relative, import.meta.url), 'utf8'));
    return parsed !== null && typeof parsed === 'object' ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function stringField(record: Record<string, unknown> | undefined, key: string): string | undefined {
  const value = record?.[key];
  return typeof value === 'string' && value !== '' ? value : undefined;
}

let cached: BuildInfo | undefined;

/**
 * Read once. dist/util/build-info.js and src/util/build-info.ts sit two levels under the package root; the test
 * build (.test-build/src/util/) three; in the bundle (scripts/bundle.mjs) this code is in dist/cli.js, one level.
 */
export function buildInfo(): BuildInfo {
  cached ??= {
    version: stringField(['../../package.json', '../../../package.json', '../package.json'].map(readJson).find((pkg) => pkg?.name === 'meshca'), 'version') ?? 'unknown',
    commit: stringField(readJson('../build-info.json') ?? readJson('./build-info.json'), 'commit') ?? 'unknown',
    nodeVersion: process.version,
  };
  return cached;
}
