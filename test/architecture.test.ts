/**
 * Dependencies point inward: every relative import in src/ is read from the source text and checked against the
 * allowed graph below, which is the one README's "Source layout" describes. A new folder, or an import that points
 * outward, fails here with the file and the import named.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { REPO_ROOT } from './support/process.js';

const SRC = path.join(REPO_ROOT, 'src');

/**
 * Each part of src/ and the parts it may import. A part is a folder, except that each file of `config/` is a part of its own:
 * its readers (`config/env.ts`, a leaf every layer may use), the flag definitions (`config/flags.ts`) and the two
 * command-level assemblies (`config/ca.ts`, `config/agent.ts`), which sit above what they configure.
 */
const ALLOWED: Readonly<Record<string, readonly string[]>> = {
  util: [],
  log: [],
  'config/env': [],
  pki: ['util'],
  wire: ['pki'],
  kube: ['config/env', 'util'],
  authn: ['pki', 'kube', 'config/env', 'util', 'log'],
  ca: ['pki', 'kube', 'config/env', 'config/flags', 'util', 'log'],
  'config/flags': ['config/env', 'log'],
  'config/istio-unsupported': ['config/env', 'log'],
  'config/agent': ['config/env', 'config/flags'],
  'config/ca': ['config/env', 'config/flags', 'kube', 'authn', 'ca', 'log'],
  agent: ['pki', 'wire', 'config/env', 'config/agent', 'util', 'log'],
  server: ['pki', 'wire', 'kube', 'authn', 'ca', 'config/env', 'config/ca', 'util', 'log'],
  commands: ['pki', 'wire', 'kube', 'authn', 'ca', 'agent', 'server', 'config/env', 'config/flags', 'config/istio-unsupported', 'config/agent', 'config/ca', 'util', 'log'],
  cli: ['commands', 'log', 'config/env', 'util'],
};

/** The part of src/ a file (path relative to src/, with `/`) belongs to. */
function partOf(relative: string): string {
  const withoutExt = relative.replace(/\.(ts|js)$/, '');
  if (withoutExt.startsWith('config/')) return withoutExt;
  const slash = withoutExt.indexOf('/');
  return slash === -1 ? withoutExt : withoutExt.slice(0, slash);
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(full);
    return entry.name.endsWith('.ts') ? [full] : [];
  });
}

/** Relative specifiers of static imports, re-exports and dynamic imports. */
function relativeImports(text: string): string[] {
  const found: string[] = [];
  for (const match of text.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm)) found.push(match[1]!);
  return found;
}

interface Edge {
  file: string;
  specifier: string;
  from: string;
  to: string;
}

function edges(): Edge[] {
  const result: Edge[] = [];
  for (const file of sourceFiles(SRC)) {
    const fromRel = path.relative(SRC, file).split(path.sep).join('/');
    for (const specifier of relativeImports(readFileSync(file, 'utf8'))) {
      const target = path.relative(SRC, path.resolve(path.dirname(file), specifier)).split(path.sep).join('/');
      assert.ok(!target.startsWith('..'), `${fromRel} imports ${specifier}, outside src/`);
      result.push({ file: fromRel, specifier, from: partOf(fromRel), to: partOf(target) });
    }
  }
  return result;
}

describe('source layout', () => {
  it('finds the imports it checks (the scanner is not blind)', () => {
    const all = edges();
    assert.ok(all.length > 100, `only ${all.length} imports found in src/`);
    assert.ok(all.some((e) => e.from === 'ca' && e.to === 'pki'));
    assert.ok(all.some((e) => e.from === 'config/ca' && e.to === 'ca'));
    assert.deepEqual(relativeImports("import x from '../a/b.js';\nexport { y } from './c.js';\nconst z = await import('../d.js');\nimport './e.js';"), [
      '../a/b.js',
      './c.js',
      '../d.js',
      './e.js',
    ]);
  });

  it('every part of src/ is in the allowed graph', () => {
    const parts = new Set(sourceFiles(SRC).map((f) => partOf(path.relative(SRC, f).split(path.sep).join('/'))));
    const unknown = [...parts].filter((p) => !(p in ALLOWED));
    assert.deepEqual(unknown, [], `add these parts of src/ to ALLOWED in test/architecture.test.ts (and README's Source layout): ${unknown.join(', ')}`);
  });

  it('every import between parts of src/ points inward, as the allowed graph says', () => {
    const outward = edges()
      .filter((e) => e.from !== e.to && !(ALLOWED[e.from] ?? []).includes(e.to))
      .map((e) => `${e.file} imports ${e.specifier} (${e.from} -> ${e.to})`);
    assert.deepEqual(outward, []);
  });

  it('the allowed graph has no cycle, so "inward" means something', () => {
    const state = new Map<string, 'visiting' | 'done'>();
    const visit = (part: string, trail: string[]): void => {
      if (state.get(part) === 'done') return;
      assert.notEqual(state.get(part), 'visiting', `cycle: ${[...trail, part].join(' -> ')}`);
      state.set(part, 'visiting');
      for (const next of ALLOWED[part] ?? []) {
        assert.ok(next in ALLOWED, `${part} may import ${next}, which is not a part`);
        visit(next, [...trail, part]);
      }
      state.set(part, 'done');
    };
    for (const part of Object.keys(ALLOWED)) visit(part, []);
  });

  it('the node agent never reaches the CA, the authenticators or the CA server, even indirectly', () => {
    const reachable = new Set<string>();
    const walk = (part: string): void => {
      for (const next of ALLOWED[part] ?? []) {
        if (!reachable.has(next)) {
          reachable.add(next);
          walk(next);
        }
      }
    };
    walk('agent');
    for (const forbidden of ['ca', 'authn', 'server', 'config/ca', 'kube']) assert.ok(!reachable.has(forbidden), `agent reaches ${forbidden}`);
    reachable.clear();
    walk('pki');
    assert.deepEqual([...reachable], ['util']);
  });
});

/**
 * Packages too costly to import at start-up for the processes that never use them, each with the one file that
 * loads it, with `import()`, when it is needed (measured on the 2-core machine: @kubernetes/client-node ~0.65
 * CPU-s, half of a `meshca ca` start that uses no kubeconfig; node-vault ~0.09 CPU-s). Elsewhere in src/ they may
 * only be named in `import type`, which TypeScript erases.
 */
const LOADED_ON_DEMAND: Readonly<Record<string, string>> = {
  '@kubernetes/client-node': 'kube/client.ts',
  'node-vault': 'ca/sources/vault/vault-client.ts',
  // Not costly but native: a CA without an HSM neither loads the addon nor fails when its build did.
  pkcs11js: 'ca/sources/pkcs11/binding.ts',
};

/** How a file imports `pkg`: 'static' for a value import or re-export, 'dynamic' for import(), null for none (or types only). */
function importKinds(text: string, pkg: string): ('static' | 'dynamic')[] {
  const quoted = `['"]${pkg.replace(/[/@.-]/g, (c) => `\\${c}`)}['"]`;
  const kinds: ('static' | 'dynamic')[] = [];
  for (const match of text.matchAll(new RegExp(`^\\s*(import|export)\\b([^;]*?)\\bfrom\\s*${quoted}|^\\s*import\\s*${quoted}`, 'gm'))) {
    if (!/^\s*type\b/.test(match[2] ?? '')) kinds.push('static');
  }
  for (const _ of text.matchAll(new RegExp(`\\bimport\\s*\\(\\s*${quoted}\\s*\\)`, 'g'))) kinds.push('dynamic');
  return kinds;
}

describe('costly packages load on demand', () => {
  it('the scanner tells value imports from type imports and import()', () => {
    const text = [
      "import type { KubeConfig } from '@kubernetes/client-node';",
      "import { type Watch, KubeConfig } from '@kubernetes/client-node';",
      "export { ApiException } from '@kubernetes/client-node';",
      "import '@kubernetes/client-node';",
      "const k8s = await import('@kubernetes/client-node');",
    ].join('\n');
    assert.deepEqual(importKinds(text, '@kubernetes/client-node'), ['static', 'static', 'static', 'dynamic']);
  });

  it('@kubernetes/client-node, node-vault and pkcs11js are imported by value only in their loader, with import()', () => {
    const found: string[] = [];
    for (const file of sourceFiles(SRC)) {
      const relative = path.relative(SRC, file).split(path.sep).join('/');
      const text = readFileSync(file, 'utf8');
      for (const [pkg, loader] of Object.entries(LOADED_ON_DEMAND)) {
        for (const kind of importKinds(text, pkg)) found.push(`${relative}: ${kind} ${pkg}${relative === loader && kind === 'dynamic' ? '' : ' (not allowed)'}`);
      }
    }
    assert.deepEqual(
      found.filter((f) => f.endsWith('(not allowed)')),
      [],
      'take types with `import type` and the module from its loader (src/kube/client.ts for the Kubernetes client)',
    );
    for (const [pkg, loader] of Object.entries(LOADED_ON_DEMAND)) assert.ok(found.includes(`${loader}: dynamic ${pkg}`), `${loader} loads ${pkg}`);
  });
});
