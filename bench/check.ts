/**
 * Independent check of what the benchmark makes meshca issue: a fast CA that issues wrong certificates is
 * worthless, so each part checks a sample with the OpenSSL command line before it reports a rate.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';

function openssl(args: string[], input?: string): { ok: boolean; output: string } {
  const result = spawnSync('openssl', args, { encoding: 'utf8', ...(input !== undefined ? { input } : {}) });
  return { ok: result.status === 0, output: `${result.stdout}${result.stderr}` };
}

/**
 * Throws unless `chain` ([leaf, ..., roots]) verifies with `openssl verify -x509_strict` against its last element,
 * carries exactly `identity` as URI SAN, and holds the CSR's public key.
 */
export function assertIssuedChain(chain: readonly string[], identity: string, csrPem: string): void {
  if (chain.length < 2) throw new Error(`issued chain has ${chain.length} element(s), expected at least 2`);
  const dir = mkdtempSync(path.join(tmpdir(), 'meshca-bench-check-'));
  try {
    const leaf = path.join(dir, 'leaf.pem');
    const roots = path.join(dir, 'roots.pem');
    writeFileSync(leaf, chain[0]!);
    writeFileSync(roots, chain[chain.length - 1]!);
    const args = ['verify', '-x509_strict', '-CAfile', roots];
    if (chain.length > 2) {
      const untrusted = path.join(dir, 'untrusted.pem');
      writeFileSync(untrusted, chain.slice(1, -1).join(''));
      args.push('-untrusted', untrusted);
    }
    const verified = openssl([...args, leaf]);
    if (!verified.ok) throw new Error(`openssl verify rejected an issued certificate: ${verified.output.trim()}`);
    const san = openssl(['x509', '-noout', '-ext', 'subjectAltName', '-in', leaf]);
    if (!san.output.includes(`URI:${identity}`)) throw new Error(`issued certificate lacks URI SAN ${identity}: ${san.output.trim()}`);
    const certKey = openssl(['x509', '-noout', '-pubkey', '-in', leaf]);
    const csrKey = openssl(['req', '-noout', '-pubkey'], csrPem);
    if (!certKey.ok || certKey.output !== csrKey.output) throw new Error('issued certificate does not hold the CSR public key');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
