/**
 * Part 1, the limit: OpenSSL's own signing rate on this machine, measured in the same run as everything else
 * so that every figure can be given as a ratio (absolute numbers drift on shared machines).
 */
import { spawn } from 'node:child_process';

export interface OpensslRate {
  signPerSecond: number;
  verifyPerSecond: number;
}

export interface LimitResult {
  command: string;
  processes: number;
  seconds: number;
  opensslVersion: string;
  rsa2048: OpensslRate;
  ecdsap256: OpensslRate;
}

function run(command: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.on('error', (error) => reject(new Error(`cannot run ${command}: ${error.message} (is OpenSSL installed?)`)));
    child.on('exit', (code) => (code === 0 ? resolve(output) : reject(new Error(`${command} ${args.join(' ')} exited with ${code}:\n${output.slice(-2000)}`))));
  });
}

/**
 * Reads the sign/verify rates from `openssl speed -multi` output. The summary table is preferred; the
 * per-child machine-readable lines (`Got: +F2:...` for RSA, `+F4:...` for ECDSA) are summed as a fallback
 * because their layout is stabler across OpenSSL versions than the table's.
 */
export function parseOpensslSpeed(output: string): { rsa2048?: OpensslRate; ecdsap256?: OpensslRate } {
  const result: { rsa2048?: OpensslRate; ecdsap256?: OpensslRate } = {};
  const rsa = /^rsa\s+2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)\s*$/m.exec(output);
  if (rsa) result.rsa2048 = { signPerSecond: Number(rsa[1]), verifyPerSecond: Number(rsa[2]) };
  const ec = /^\s*256 bits ecdsa \(nistp256\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)\s*$/m.exec(output);
  if (ec) result.ecdsap256 = { signPerSecond: Number(ec[1]), verifyPerSecond: Number(ec[2]) };
  const sum = (pattern: RegExp): OpensslRate | undefined => {
    let sign = 0;
    let verify = 0;
    let seen = false;
    for (const match of output.matchAll(pattern)) {
      seen = true;
      sign += Number(match[1]);
      verify += Number(match[2]);
    }
    return seen ? { signPerSecond: sign, verifyPerSecond: verify } : undefined;
  };
  result.rsa2048 ??= sum(/^Got: \+F2:\d+:2048:([\d.]+):([\d.]+) from \d+$/gm);
  result.ecdsap256 ??= sum(/^Got: \+F4:\d+:256:([\d.]+):([\d.]+) from \d+$/gm);
  return result;
}

export async function measureOpensslLimit(options: { seconds: number; processes: number }): Promise<LimitResult> {
  const args = ['speed', '-seconds', String(options.seconds), '-multi', String(options.processes), 'rsa2048', 'ecdsap256'];
  const output = await run('openssl', args);
  const parsed = parseOpensslSpeed(output);
  if (!parsed.rsa2048 || !parsed.ecdsap256) {
    throw new Error(`could not read the rsa2048/ecdsap256 sign rates from openssl speed; its output ended with:\n${output.slice(-1500)}`);
  }
  const version = (await run('openssl', ['version'])).trim();
  return {
    command: `openssl ${args.join(' ')}`,
    processes: options.processes,
    seconds: options.seconds,
    opensslVersion: version,
    rsa2048: parsed.rsa2048,
    ecdsap256: parsed.ecdsap256,
  };
}
