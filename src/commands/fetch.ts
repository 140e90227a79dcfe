/**
 * `meshca fetch`: an SDS client that behaves like Envoy (one stream per secret, ACKs, follows pushes) and prints
 * or writes the PEMs it gets. For checking an agent by hand and for examples.
 */
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import * as path from 'node:path';
import type { Command } from 'commander';
import * as grpc from '@grpc/grpc-js';
import { connectSds, SecretWatch, workloadTokenMetadata, type SecretUpdate } from '../agent/sds-client.js';
import { DEFAULT_SDS_SOCKET } from '../config/agent.js';
import { ConfigError, readDuration } from '../config/env.js';
import { certificatesFromPem, parseCertificate } from '../pki/index.js';
import { writeFileAtomic } from '../util/fs.js';
import { COMMAND_DESCRIPTIONS } from './descriptions.js';

interface FetchFlags {
  sdsSocket?: string;
  tokenFile?: string;
  resource: string[];
  out?: string;
  watch?: boolean;
  timeout?: string;
  showKey?: boolean;
}

/** What `fetch` prints in place of a private key unless --show-key is given. */
export const HIDDEN_KEY = '[private key hidden: use --show-key to print it, or --out DIR to write it to key.pem (0600)]';

/**
 * A failed SDS stream as one line: a socket nobody listens on, or the agent's status (with how to fix the usual
 * ones).
 */
function describeStreamError(socket: string, name: string, error: grpc.ServiceError): string {
  const details = error.details ?? error.message;
  if (error.code === grpc.status.UNAVAILABLE) {
    if (/\bENOENT\b/.test(details)) return `no agent listens on the SDS socket ${socket} (it does not exist): start \`meshca agent\` or point --sds-socket at its socket`;
    if (/\bECONNREFUSED\b/.test(details)) return `nothing accepts connections on the SDS socket ${socket} (a stale socket file?): start \`meshca agent\` or point --sds-socket at its socket`;
    if (/\bEACCES\b/.test(details)) return `no permission to connect to the SDS socket ${socket}: run as a user the socket's mode allows (the agent's --sds-socket-mode)`;
  }
  return `SDS stream for ${name} failed: ${grpc.status[error.code] ?? error.code}: ${details}`;
}

function readToken(file: string | undefined): string | undefined {
  if (file === undefined) return undefined;
  try {
    const token = readFileSync(file, 'utf8').trim();
    if (token === '') throw new ConfigError(`--token-file ${file} is empty`);
    return token;
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    throw new ConfigError(`cannot read --token-file ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
}

/** One line about what arrived, e.g. "default: spiffe://cluster.local/ns/a/sa/b serial … expires …". */
function describeUpdate(update: SecretUpdate): string {
  if (update.certificateChain) {
    const leaf = parseCertificate(certificatesFromPem(update.certificateChain)[0]!);
    const id = leaf.sans.uris[0] ?? leaf.subject;
    return `${update.name}: ${id} serial ${leaf.serialHex} expires ${leaf.notAfter.toISOString()} (version ${update.versionInfo})`;
  }
  if (update.trustDomains) {
    const domains = update.trustDomains.map((td) => `${td.name} (${certificatesFromPem(td.pem).length} root(s))`);
    return `${update.name}: SPIFFE validator, ${domains.length} trust domain(s): ${domains.join(', ')} (version ${update.versionInfo})`;
  }
  const roots = certificatesFromPem(update.trustedCa ?? '').map(parseCertificate);
  return `${update.name}: ${roots.length} trusted root(s): ${roots.map((r) => r.subject || r.serialHex).join('; ')} (version ${update.versionInfo})`;
}

function fileStem(name: string): string {
  return name === 'default' || name === 'ROOTCA' ? '' : `${name.replace(/[^A-Za-z0-9._-]+/g, '_')}-`;
}

async function writeUpdate(dir: string, update: SecretUpdate): Promise<string[]> {
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const stem = fileStem(update.name);
  const written: string[] = [];
  if (update.privateKey !== undefined) {
    const file = path.join(dir, `${stem}key.pem`);
    await writeFileAtomic(file, update.privateKey, 0o600);
    written.push(file);
  }
  if (update.certificateChain !== undefined) {
    const file = path.join(dir, `${stem}cert-chain.pem`);
    await writeFileAtomic(file, update.certificateChain, 0o644);
    written.push(file);
  }
  if (update.trustedCa !== undefined) {
    const file = path.join(dir, `${stem}root-cert.pem`);
    await writeFileAtomic(file, update.trustedCa, 0o644);
    written.push(file);
  }
  for (const td of update.trustDomains ?? []) {
    const file = path.join(dir, `${stem}${fileStem(td.name)}root-cert.pem`);
    await writeFileAtomic(file, td.pem, 0o644);
    written.push(file);
  }
  return written;
}

function printUpdate(update: SecretUpdate, showKey: boolean): void {
  const parts = [`# ${describeUpdate(update)}\n`];
  if (update.certificateChain !== undefined) parts.push(update.certificateChain);
  if (update.privateKey !== undefined) parts.push(showKey ? update.privateKey : HIDDEN_KEY);
  if (update.trustedCa !== undefined) parts.push(update.trustedCa);
  for (const td of update.trustDomains ?? []) parts.push(`# trust domain ${td.name}\n`, td.pem);
  process.stdout.write(parts.map((p) => (p.endsWith('\n') ? p : `${p}\n`)).join(''));
}

export function registerFetchCommand(program: Command): void {
  program
    .command('fetch')
    .description(COMMAND_DESCRIPTIONS.fetch)
    .option('--sds-socket <path>', 'the agent\'s SDS Unix socket', DEFAULT_SDS_SOCKET)
    .option('--token-file <file>', 'service-account token sent as istio_sds_credentials_header-bin (re-read on reconnect)')
    .option('--resource <name>', 'secret to get: default, ROOTCA, ALL, spiffe://<trust-domain>, file-cert:<cert>~<key>, file-root:<path> (repeatable)', (value: string, all: string[]) => [...all, value], [] as string[])
    .option('--out <dir>', 'write key.pem (0600), cert-chain.pem, root-cert.pem here instead of printing')
    .option('--watch', 'keep the streams open and print (or write) every push')
    .option('--show-key', 'print the private key too (it is hidden by default; --out always writes it, mode 0600)')
    .option('--timeout <duration>', 'without --watch: how long to wait for the secrets', '30s')
    .action(async (flags: FetchFlags) => {
      const names = flags.resource.length > 0 ? [...new Set(flags.resource)] : ['default'];
      const timeoutMs = readDuration(flags.timeout, {}, { flag: '--timeout' }, 30, { min: 0.1 }) * 1000;
      readToken(flags.tokenFile); // A bad --token-file fails now, not on the first connect.
      const client = connectSds(flags.sdsSocket ?? DEFAULT_SDS_SOCKET);
      const watches: SecretWatch[] = [];
      const stopAll = (): void => {
        watches.forEach((w) => w.close());
        client.close();
      };
      if (flags.watch) {
        await new Promise<void>((resolve) => {
          for (const name of names) {
            watches.push(
              new SecretWatch(client, { name, metadata: () => workloadTokenMetadata(readToken(flags.tokenFile)) }, {
                onUpdate: (update) => {
                  if (flags.out) {
                    void writeUpdate(flags.out, update).then((files) => process.stderr.write(`${describeUpdate(update)} -> ${files.join(', ')}\n`));
                  } else {
                    printUpdate(update, flags.showKey === true);
                  }
                },
                onNack: (message) => process.stderr.write(`${name}: rejected an update: ${message}\n`),
                onStreamError: (error, retryInMs) =>
                  process.stderr.write(`${name}: stream failed: ${grpc.status[error.code]}: ${error.details}; reconnecting in ${retryInMs} ms\n`),
              }),
            );
          }
          const finish = (): void => {
            stopAll();
            resolve();
          };
          process.once('SIGINT', finish);
          process.once('SIGTERM', finish);
        });
        return;
      }
      const updates = new Map<string, SecretUpdate>();
      const nacks: string[] = [];
      const socket = flags.sdsSocket ?? DEFAULT_SDS_SOCKET;
      try {
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => {
            const missing = names.filter((n) => !updates.has(n));
            const asked = flags.tokenFile ? `with the token in ${flags.tokenFile}` : 'without a token (no --token-file)';
            const lastNack = nacks.length > 0 ? `; the last update was rejected: ${nacks[nacks.length - 1]!.slice(0, 300)}` : '';
            reject(
              new Error(
                `the agent at ${socket} sent no ${missing.join(', ')} within ${timeoutMs / 1000}s (asked ${asked})${lastNack}: ` +
                  `it is likely still waiting for the CA or for proof of the token (see the agent's log, e.g. 'CA request failed'); retry with a longer --timeout`,
              ),
            );
          }, timeoutMs);
          for (const name of names) {
            watches.push(
              new SecretWatch(client, { name, metadata: () => workloadTokenMetadata(readToken(flags.tokenFile)), reconnect: false }, {
                onUpdate: (update) => {
                  updates.set(name, update);
                  if (updates.size === names.length) {
                    clearTimeout(timer);
                    resolve();
                  }
                },
                onNack: (message) => {
                  nacks.push(`${name}: ${message}`);
                  process.stderr.write(`${name}: rejected an update: ${message}\n`);
                },
                onStreamError: (error) => {
                  clearTimeout(timer);
                  reject(new Error(describeStreamError(socket, name, error)));
                },
              }),
            );
          }
        });
      } finally {
        // Let the last ACKs leave before the channel closes.
        await new Promise((resolve) => setImmediate(resolve));
        stopAll();
      }
      for (const name of names) {
        const update = updates.get(name)!;
        if (flags.out) {
          const files = await writeUpdate(flags.out, update);
          process.stderr.write(`${describeUpdate(update)} -> ${files.join(', ')}\n`);
        } else {
          printUpdate(update, flags.showKey === true);
        }
      }
    });
}
