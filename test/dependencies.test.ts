/**
 * What a deployment installs is `npm ci --omit=dev` (the Dockerfile's `deps` stage): every package that src/
 * imports at run time must be in package.json `dependencies`, never only in `devDependencies` (test libraries such
 * as @peculiar/*, fast-check and tsx). The imports are read from the source text, like test/architecture.test.ts
 * reads the relative ones; a type-only import is erased by the compiler and needs nothing at run time.
 * The project's license files agree with package.json as well.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { REPO_ROOT } from './support/process.js';

interface PackageJson {
  license: string;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
}

const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as PackageJson;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(full);
    return entry.name.endsWith('.ts') ? [full] : [];
  });
}

/**
 * Bare specifiers a file loads at run time: `import ... from`, `export ... from` and `import 'x'` statements
 * (not `import type`), and dynamic `import('x')`. Statements start a line, so prose in comments is not read.
 */
function runtimeImports(text: string): string[] {
  const found: string[] = [];
  for (const match of text.matchAll(/^[ \t]*(import|export)\b(?!\s+type\b)([^;'"]*?\bfrom\s*|\s*)['"]([^'"]+)['"]/gm)) found.push(match[3]!);
  for (const match of text.matchAll(/\bimport\s*\(\s*['"]([^'"]+)['"]\s*\)/g)) found.push(match[1]!);
  return found.filter((specifier) => !specifier.startsWith('.') && !specifier.startsWith('node:') && !builtinModules.includes(specifier));
}

/** `@scope/name/sub` → `@scope/name`; `name/sub` → `name`. */
function packageOf(specifier: string): string {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

describe('runtime dependencies', () => {
  const imports = sourceFiles(path.join(REPO_ROOT, 'src')).flatMap((file) =>
    runtimeImports(readFileSync(file, 'utf8')).map((specifier) => ({ file: path.relative(REPO_ROOT, file), name: packageOf(specifier) })),
  );

  it('reads imports as the compiler does: statements only, type-only imports erased', () => {
    const text = [
      "import { a } from 'alpha';",
      "import type { B } from 'beta';",
      'import {',
      '  c,',
      "} from '@scope/gamma/sub';",
      "export { d } from 'delta';",
      "import 'epsilon';",
      "const z = await import('zeta');",
      " * an example in a comment: import x from 'eta';",
      "// tell \"you called it wrong\" from 'theta'",
      "import { readFile } from 'node:fs';",
      "import { local } from './local.js';",
    ].join('\n');
    assert.deepEqual(runtimeImports(text).map(packageOf), ['alpha', '@scope/gamma', 'delta', 'epsilon', 'zeta']);
  });

  it('src/ imports only packages in dependencies, never a devDependency', () => {
    assert.ok(imports.length > 20, `found ${imports.length} package imports in src/; the scan is broken`);
    const outside = imports.filter(({ name }) => !Object.hasOwn(pkg.dependencies, name));
    assert.deepEqual(
      outside.map(({ file, name }) => `${file} imports ${name}${Object.hasOwn(pkg.devDependencies, name) ? ' (a devDependency: move it to dependencies, or keep it out of src/)' : ''}`),
      [],
    );
  });

  it('every dependency is used by src/ (a test-only library belongs in devDependencies)', () => {
    const used = new Set(imports.map(({ name }) => name));
    assert.deepEqual(
      Object.keys(pkg.dependencies).filter((name) => !used.has(name)),
      [],
      'dependencies no file of src/ imports',
    );
  });
});

describe('license', () => {
  it('LICENSE holds the Apache License 2.0 that package.json names', () => {
    assert.equal(pkg.license, 'Apache-2.0');
    const text = readFileSync(path.join(REPO_ROOT, 'LICENSE'), 'utf8');
    assert.match(text, /^\s+Apache License\n\s+Version 2\.0, January 2004\n\s+http:\/\/www\.apache\.org\/licenses\/\n/);
    assert.match(text, /END OF TERMS AND CONDITIONS/);
    assert.match(text, /APPENDIX: How to apply the Apache License to your work\./);
  });
});
