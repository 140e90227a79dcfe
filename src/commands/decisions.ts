/**
 * `meshca decisions [identity]`: what the CA decided recently, for one SPIFFE ID or for everyone — issued (serial,
 * NotAfter) or refused (gRPC status and reason) — read from a running CA's /debug/decisions.
 */
import type { Command } from 'commander';
import { bad, readEnum } from '../config/env.js';
import { addFlag } from '../config/flags.js';
import type { Decision, DecisionsAnswer } from '../server/index.js';
import { CA_MONITORING_FLAG, getFromMonitoring, monitoringBaseUrl } from './ca-monitoring.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

interface DecisionsFlags {
  monitoringAddr?: string;
  limit: string;
  output: string;
}

function isAnswer(value: unknown): value is DecisionsAnswer {
  return typeof value === 'object' && value !== null && Array.isArray((value as DecisionsAnswer).decisions) && typeof (value as DecisionsAnswer).capacity === 'number';
}

/** Columns padded to their widest cell; the last one (the reason) is left as long as it is. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

function describeCaller(d: Decision): string {
  if (d.caller === null) return '-';
  return `${d.caller} (${d.callerKind ?? '?'}${d.impersonated ? ', impersonating' : ''})`;
}

export function decisionsTable(answer: DecisionsAnswer): string {
  const rows = answer.decisions.map((d) => [
    d.time,
    d.outcome,
    d.code,
    d.identity ?? '-',
    describeCaller(d),
    d.serial ?? '-',
    d.notAfter ?? '-',
    d.reason ?? '',
  ]);
  return formatTable(['TIME', 'OUTCOME', 'CODE', 'IDENTITY', 'CALLER', 'SERIAL', 'NOT AFTER', 'REASON'], rows);
}

export function registerDecisionsCommand(program: Command): void {
  const command = program
    .command('decisions')
    .description(COMMAND_DESCRIPTIONS.decisions)
    .argument('[identity]', 'only decisions for this SPIFFE ID (issued or asked for) or by this caller, e.g. spiffe://cluster.local/ns/default/sa/httpbin');
  addFlag(command, CA_MONITORING_FLAG);
  command
    .option('--limit <n>', 'at most this many decisions, newest first', '20')
    .option('-o, --output <format>', 'table | json', 'table')
    .action(async (identity: string | undefined, flags: DecisionsFlags) => {
      const output = readEnum(flags.output, {}, { flag: '--output' }, ['table', 'json'] as const, 'table');
      if (!/^[1-9][0-9]{0,5}$/.test(flags.limit)) throw bad({ flag: '--limit' }, flags.limit, 'a whole number from 1 to 999999');
      const base = monitoringBaseUrl(flags.monitoringAddr, process.env);
      const query = new URLSearchParams({ limit: flags.limit, ...(identity ? { identity } : {}) });
      const answer = await getFromMonitoring(base, `/debug/decisions?${query.toString()}`);
      if (answer.status === 404) throw new Error(`${base.origin} has no /debug/decisions: it is not a meshca CA of this version (or not a meshca CA at all); check --monitoring-addr`);
      if (answer.status !== 200 || !isAnswer(answer.body)) {
        const reason = typeof answer.body === 'object' && answer.body !== null && 'error' in answer.body ? String(answer.body.error) : `HTTP ${answer.status}`;
        throw new Error(`the CA refused the query: ${reason}`);
      }
      if (output === 'json') {
        process.stdout.write(`${JSON.stringify(answer.body, null, 2)}\n`);
        return;
      }
      const { decisions, held, capacity } = answer.body;
      if (capacity === 0) {
        process.stdout.write('the CA keeps no decisions (--decision-record-size 0)\n');
        return;
      }
      const scope = identity ? ` for ${identity}` : '';
      if (decisions.length === 0) {
        process.stdout.write(`no decisions${scope} among the last ${held} the CA holds (it keeps ${capacity}); ask for a certificate, or check the identity\n`);
        return;
      }
      process.stdout.write(`${decisionsTable(answer.body)}\n`);
    });
}
