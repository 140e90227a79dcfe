/**
 * Asking a running CA's monitoring server (`meshca ca --monitoring-addr`, 15014) from the command line: the flag
 * that names it, and one GET that turns every failure into one line saying how to reach the CA.
 */
import { bad, raw, type Env } from '../config/env.js';
import { sourceOf, type FlagSpec } from '../config/flags.js';

export const CA_MONITORING_FLAG: FlagSpec = {
  flags: '--monitoring-addr <host:port>',
  description: "the CA's monitoring server (meshca ca --monitoring-addr), host:port or an http(s) URL",
  env: ['MESHCA_CA_MONITORING_ADDR'],
  defaultText: 'localhost:15014',
};

/** The base URL of the CA's monitoring server from the flag or its variable. */
export function monitoringBaseUrl(flag: string | undefined, env: Env): URL {
  const source = sourceOf(CA_MONITORING_FLAG);
  const text = raw(flag, env, source) ?? 'localhost:15014';
  let url: URL;
  try {
    url = new URL(/^https?:\/\//.test(text) ? text : `http://${text}`);
  } catch {
    throw bad(source, text, 'host:port (e.g. localhost:15014) or an http(s) URL');
  }
  if (!url.port && !/^https?:\/\//.test(text)) throw bad(source, text, 'host:port (e.g. localhost:15014) or an http(s) URL');
  return url;
}

export interface MonitoringAnswer {
  status: number;
  body: unknown;
  /** The server's Date header (epoch ms), when it sent a valid one. */
  date?: number;
}

const HINT = 'is meshca ca running there? Point --monitoring-addr (env MESHCA_CA_MONITORING_ADDR) at its --monitoring-addr, e.g. after `kubectl -n istio-system port-forward deploy/meshca 15014`';

/** GET `path` from the CA's monitoring server; rejects with one actionable line when it cannot be asked. */
export async function getFromMonitoring(base: URL, path: string, timeoutMs = 5000): Promise<MonitoringAnswer> {
  const url = new URL(path, base);
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/json' } });
  } catch (error) {
    const inner = (error as { cause?: { code?: unknown; message?: unknown } }).cause;
    const cause =
      (error as Error).name === 'TimeoutError'
        ? `no answer within ${timeoutMs / 1000}s`
        : typeof inner?.code === 'string'
          ? inner.code
          : typeof inner?.message === 'string'
            ? inner.message
            : (error as Error).message;
    throw new Error(`cannot reach the CA monitoring server at ${base.origin} (${cause}): ${HINT}`);
  }
  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text) as unknown;
  } catch {
    throw new Error(`${url.origin}${url.pathname} answered HTTP ${response.status} with something other than JSON: ${HINT}`);
  }
  const date = Date.parse(response.headers.get('date') ?? '');
  return { status: response.status, body, ...(Number.isNaN(date) ? {} : { date }) };
}
