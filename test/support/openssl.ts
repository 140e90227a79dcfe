/** Independent checks with the OpenSSL command line on what meshca issues. */
import { execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { makeTempDir } from './process.js';

export interface OpensslResult {
  ok: boolean;
  output: string;
}

/**
 * `openssl verify -x509_strict` of the leaf (first cert of `chainPem`) with the other certs of the chain as
 * untrusted intermediates and `rootsPem` as the only trust anchors.
 */
export function opensslVerify(leafPem: string, intermediatesPem: string, rootsPem: string, extraArgs: string[] = []): OpensslResult {
  const { dir, cleanup } = makeTempDir('meshca-openssl-');
  try {
    const leaf = path.join(dir, 'leaf.pem');
    const roots = path.join(dir, 'roots.pem');
    writeFileSync(leaf, leafPem);
    writeFileSync(roots, rootsPem);
    const args = ['verify', '-x509_strict', '-CAfile', roots, ...extraArgs];
    if (intermediatesPem.trim()) {
      const untrusted = path.join(dir, 'untrusted.pem');
      writeFileSync(untrusted, intermediatesPem);
      args.push('-untrusted', untrusted);
    }
    args.push(leaf);
    const result = spawnSync('openssl', args, { encoding: 'utf8' });
    return { ok: result.status === 0 && /: OK\s*$/.test(result.stdout), output: `${result.stdout}${result.stderr}` };
  } finally {
    cleanup();
  }
}

/** Verifies an Istio-style response chain [leaf, intermediates..., roots] with the last element as trust anchors. */
export function opensslVerifyResponseChain(chain: readonly string[]): OpensslResult {
  if (chain.length < 2) return { ok: false, output: `chain has ${chain.length} element(s)` };
  return opensslVerify(chain[0]!, chain.slice(1, -1).join(''), chain[chain.length - 1]!);
}

/** `openssl x509 -noout -text` of one PEM certificate. */
export function opensslText(certPem: string): string {
  return execFileSync('openssl', ['x509', '-noout', '-text'], { input: certPem, encoding: 'utf8' });
}
