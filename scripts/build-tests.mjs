// `npm run build:tests`: the test suite compiled to .test-build/ for `npm test`, with esbuild: TypeScript to
// JavaScript file by file, no bundling, no type check. Types are checked by `npm run check` (and `npm run build`
// checks src/); here speed matters, since `npm test` waits for it: tsc took ~16 s of CPU for this, esbuild ~0.5 s.
import { readdirSync, rmSync, symlinkSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

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
