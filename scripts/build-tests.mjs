// `npm run build:tests`: what `npm test` runs, compiled with esbuild (TypeScript to JavaScript file by file, no
// bundling, no type check): src/, test/, bench/ and scripts/ into .test-build/, and src/ into dist/ (the CLI the
// tests start, as `npm run build` makes it with tsc). Types are checked by `npm run check` and by `npm run build`
// (which `npm ci` runs as `prepare`); here speed matters, since `npm test` waits for it: tsc took ~16 s of CPU for
// the tests and ~11 s for dist/, esbuild ~0.5 s for both.
import { readdirSync, rmSync, symlinkSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { bundleCli } from './bundle.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const outdir = path.join(root, '.test-build');

/** Every .ts file under `dir` (not .d.ts), recursively. */
function sources(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === 'node_modules' ? [] : sources(full);
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [full] : [];
  });
}

rmSync(outdir, { recursive: true, force: true });
await build({
  entryPoints: ['src', 'test', 'bench', 'scripts'].flatMap((dir) => sources(path.join(root, dir))),
  outdir,
  outbase: root,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  logLevel: 'warning',
});
// The tests find the .proto files beside their compiled form, as they do beside the sources.
symlinkSync('../proto', path.join(outdir, 'proto'));

// dist/ as tsconfig.build.json lays it out (rootDir src), over whatever an earlier build left there.
await build({
  entryPoints: sources(path.join(root, 'src')),
  outdir: path.join(root, 'dist'),
  outbase: path.join(root, 'src'),
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  logLevel: 'warning',
});
// The CLI the tests start is the bundle, as `npm run build` makes it.
await bundleCli();
