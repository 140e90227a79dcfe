/**
 * `meshca secrets`: what the node agent holds, like `istioctl proxy-config secret` shows for one Envoy. It reads the
 * agent's /debug/secrets (status server, this host only) and prints every identity with its certificate's serial,
 * issuer, expiry, next renewal, watching streams and state, the trust bundle's roots, and the latest failed first
 * issuances (a workload that got no certificate). Identities and public certificate data only: no keys, no tokens.
 */
import type { Command } from 'commander';
import type { SecretsReport } from '../agent/debug.js';
import { AGENT_FLAGS } from '../config/agent.js';
import { bad, readAddress, readDuration, readEnum } from '../config/env.js';
import { addFlag, sourceOf, type FlagSpec } from '../config/flags.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

const STATUS_ADDR: FlagSpec = {
  flags: '--status-addr <host:port>',
  description: "the agent's status server (its own --status-addr)",
  env: ['MESHCA_STATUS_ADDR'],
  defaultText: AGENT_FLAGS.statusAddr.defaultText,
};
const OUTPUT: FlagSpec = { flags: '-o, --output <format>', description: 'table | json', defaultText: 'table' };
const TIMEOUT: FlagSpec = { flags: '--timeout <duration>', description: 'how long to wait for the agent', defaultText: '5s' };

interface SecretsFlags {
  statusAddr?: string;
  output?: string;
  timeout?: string;
}

/** The URL to ask: an agent listening on every address (0.0.0.0, ::) is asked on this host's loopback. */
export function debugUrl(address: { host: string; port: number }): string {
  const host = address.host === '0.0.0.0' ? '127.0.0.1' : address.host === '::' ? '::1' : address.host;
  return `http://${host.includes(':') ? `[${host}]` : host}:${address.port}/debug/secrets`;
}

function errorCode(error: unknown): string {
  const cause = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
  if (typeof cause?.code === 'string') return cause.code;
  if (error instanceof Error && error.name === 'TimeoutError') return 'no answer in time';
  return error instanceof Error ? error.message : String(error);
}

/** Failures past the flags (the agent is not there, or answers something else) exit 1, not the usage error's 2. */
export async function readSecretsReport(url: string, timeoutMs: number, addressText: string): Promise<SecretsReport> {
  const fix = `is \`meshca agent\` running on this host? Point --status-addr (or MESHCA_STATUS_ADDR) at its --status-addr (now ${addressText})`;
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
  } catch (error) {
    throw new Error(`cannot reach the meshca agent's status server at ${url} (${errorCode(error)}): ${fix}`);
  }
  const body = await response.text();
  if (response.status === 404) {
    throw new Error(`${url} answered 404: what listens there is not a meshca agent with /debug/secrets (another process, or an older meshca); ${fix}`);
  }
  if (response.status !== 200) {
    const reason = body.split('\n')[0]?.trim() || response.statusText;
    throw new Error(`the agent's status server at ${url} answered ${response.status}: ${reason}`);
  }
  try {
    const report = JSON.parse(body) as SecretsReport;
    if (Array.isArray(report.identities) && Array.isArray(report.recentFailures)) return report;
  } catch {
    // Reported below.
  }
  throw new Error(`${url} did not answer with the agent's secrets list: ${fix}`);
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  return [header, ...rows].map((row) => row.map((cell, column) => cell.padEnd(widths[column]!)).join('   ').trimEnd()).join('\n');
}

export function formatReport(report: SecretsReport): string {
  const out: string[] = [];
  if (report.identities.length === 0) {
    out.push('no workload identities cached (no workload has fetched a certificate, or their streams ended and the idle time passed)');
  } else {
    out.push(
      table(
        ['RESOURCE NAME', 'SPIFFE ID', 'SERIAL', 'ISSUER', 'NOT AFTER', 'NEXT RENEWAL', 'STREAMS', 'STATE'],
        report.identities.map((i) => [i.resourceNames.join(','), i.spiffeId, i.serial, i.issuer, i.notAfter, i.nextRenewal ?? '-', String(i.streams), i.state]),
      ),
    );
    for (const i of report.identities) {
      if (i.lastError) out.push(`${i.spiffeId}: last renewal failed at ${i.lastError.at}: ${i.lastError.message}`);
    }
  }
  out.push('');
  if (report.trustBundle) {
    out.push(
      table(
        ['RESOURCE NAME', 'ROOT SUBJECT', 'NOT AFTER', 'SHA-256 FINGERPRINT'],
        report.trustBundle.roots.map((r) => [report.trustBundle!.resourceName, r.subject, r.notAfter, r.fingerprintSha256]),
      ),
    );
  } else {
    out.push('ROOTCA: no trust bundle yet (it comes with the first certificate)');
  }
  if (report.recentFailures.length > 0) {
    out.push('', 'Recent failed issuances (newest last):');
    for (const f of report.recentFailures) out.push(`  ${f.at}  ${f.credential}  ${f.code}: ${f.message}`);
  }
  return `${out.join('\n')}\n`;
}

export function registerSecretsCommand(program: Command): void {
  const command = program.command('secrets').description(COMMAND_DESCRIPTIONS.secrets);
  for (const spec of [STATUS_ADDR, OUTPUT, TIMEOUT]) addFlag(command, spec);
  command.action(async (flags: SecretsFlags) => {
    const address = readAddress(flags.statusAddr, process.env, sourceOf(STATUS_ADDR), AGENT_FLAGS.statusAddr.defaultText);
    const output = readEnum(flags.output, {}, { flag: '--output' }, ['table', 'json'] as const, 'table');
    const timeoutMs = readDuration(flags.timeout, {}, sourceOf(TIMEOUT), 5, { min: 0.1 }) * 1000;
    if (address.port === 0) throw bad(sourceOf(STATUS_ADDR), address.text, 'the port the agent listens on, e.g. 127.0.0.1:15020');
    const report = await readSecretsReport(debugUrl(address), timeoutMs, address.text);
    process.stdout.write(output === 'json' ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
  });
}
