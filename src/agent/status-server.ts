/**
 * Status HTTP server (Istio's 15020): readiness for the kubelet, Prometheus metrics, and /debug/secrets (what
 * `meshca secrets` shows) for callers on this host only.
 */
import Fastify from 'fastify';
import type { SecretsReport } from './debug.js';
import type { AgentMetrics } from './metrics.js';

export interface Readiness {
  ready: boolean;
  /** What is still missing, for the 503 body. */
  waitingFor: string[];
}

export interface StatusServer {
  /** http://host:port actually bound (port 0 picks a free one). */
  url: string;
  close(): Promise<void>;
}

export async function startStatusServer(options: {
  host: string;
  port: number;
  metrics: AgentMetrics;
  readiness: () => Readiness;
  /** The identities the agent holds (no keys, no tokens). */
  secrets: () => SecretsReport;
}): Promise<StatusServer> {
  const app = Fastify({ logger: false });
  app.get('/healthz/ready', async (_request, reply) => {
    const state = options.readiness();
    if (state.ready) return reply.code(200).type('text/plain').send('ready\n');
    return reply.code(503).type('text/plain').send(`not ready: waiting for ${state.waitingFor.join(', ')}\n`);
  });
  app.get('/metrics', async (_request, reply) => {
    const body = await options.metrics.registry.metrics();
    return reply.type(options.metrics.registry.contentType).send(body);
  });
  app.get('/debug/secrets', async (request, reply) => {
    // The list names every workload identity on the node. The server may listen on the pod IP for the kubelet and
    // Prometheus (deploy/kubernetes/agent.yaml), so the debug view answers only callers on this host, as Istio's
    // agent does for its own debug and quit endpoints; `kubectl exec` and `kubectl port-forward` arrive from there.
    if (!isLoopback(request.socket.remoteAddress)) {
      return reply
        .code(403)
        .type('text/plain')
        .send('/debug/secrets answers only callers on the agent\'s own host (127.0.0.1, ::1); run `meshca secrets` there (kubectl exec) or through kubectl port-forward\n');
    }
    return reply.type('application/json').send(`${JSON.stringify(options.secrets(), null, 2)}\n`);
  });
  try {
    await app.listen({ host: options.host, port: options.port });
  } catch (error) {
    await app.close().catch(() => undefined);
    const code = (error as NodeJS.ErrnoException).code;
    const hint = code === 'EADDRINUSE' ? ' (the port is in use: is another agent running? choose another --status-addr)' : '';
    throw new Error(`cannot listen on --status-addr ${options.host}:${options.port}: ${(error as Error).message}${hint}`);
  }
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  return { url: `http://${host}:${port}`, close: () => app.close() };
}

/** True for 127.0.0.0/8 and ::1, also in their IPv4-mapped IPv6 form. */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice('::ffff:'.length) : address;
  return address === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(v4);
}
