// Bundles the CLI: dist/cli.js and its lazily loaded parts in dist/chunks/, one file per command plus shared
// chunks, with the npm dependencies inside. `meshca` then starts without resolving and reading hundreds of modules
// one by one: a `meshca ca` spends ~35-55% less CPU before it serves (see bench/NOTES.md, "Start-up cost").
// Run by `npm run build` after tsc, and by `npm run build:tests`. tsc's own dist/ tree stays beside the bundle
// (dist/commands/, dist/ca/, ...): the bundle does not use it; bench part "stages" profiles it (cli-modules.js), since
// its file names tell the stages apart.
import { copyFileSync, existsSync, readFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import process from 'node:process';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const BANNER_MARK = '__meshcaCreateRequire';

/** tsc's (or the test build's) unbundled entry point, kept as dist/cli-modules.js before the bundle replaces dist/cli.js. */
export function keepModuleEntry() {
  const entry = path.join(dist, 'cli.js');
  // Run again without a new tsc build, dist/cli.js is already the bundle: the kept entry stays as it is.
  if (!existsSync(entry) || readFileSync(entry, 'utf8').includes(BANNER_MARK)) return;
  copyFileSync(entry, path.join(dist, 'cli-modules.js'));
  if (existsSync(`${entry}.map`)) copyFileSync(`${entry}.map`, path.join(dist, 'cli-modules.js.map'));
}

export async function bundleCli() {
  keepModuleEntry();
  rmSync(path.join(dist, 'chunks'), { recursive: true, force: true });
  await build({
    entryPoints: { cli: path.join(root, 'src/cli.ts') },
    outdir: dist,
    chunkNames: 'chunks/[name]-[hash]',
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    sourcemap: true,
    // pkcs11js is a native addon (a .node file built for this machine) and stays a package. The Kubernetes client and
    // node-vault are bundled into chunks of their own, loaded only when a kubeconfig or Vault is used: the client's
    // ~800 modules made a `meshca ca --kubeconfig` start cost ~1.9-2.1 CPU-s, bundled ~0.9.
    external: ['pkcs11js'],
    // CommonJS dependencies inside an ES module bundle still call require() (for node: built-ins, and protobufjs
    // for optional modules): give them one.
    banner: { js: `import { createRequire as ${BANNER_MARK} } from 'node:module'; const require = ${BANNER_MARK}(import.meta.url);` },
    logLevel: 'warning',
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await bundleCli();
