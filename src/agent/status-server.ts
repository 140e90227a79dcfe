/** Status HTTP server (Istio's 15020): readiness for the kubelet and Prometheus metrics. */
import Fastify from 'fastify';
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
