/**
 * The monitoring HTTP server (istiod's 15014): /metrics for Prometheus, /ready backed by the signing self-probe,
 * /healthz for liveness, and /debug/ca describing what the CA signs with (no secrets).
 */
import Fastify, { type FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';

export interface MonitoringOptions {
  /** A prom-client Registry, or anything that renders the exposition text the same way (the workers' sum). */
  registry: Pick<Registry, 'metrics' | 'contentType'>;
  ready(): Promise<{ ready: boolean }>;
  debugInfo(): Record<string, unknown>;
}

export function createMonitoringServer(options: MonitoringOptions): FastifyInstance {
  const app = Fastify({ logger: false });
  app.get('/metrics', async (_request, reply) => {
    const text = await options.registry.metrics();
    return reply.header('content-type', options.registry.contentType).send(text);
  });
  app.get('/ready', async (_request, reply) => {
    const status = await options.ready();
    return reply.code(status.ready ? 200 : 503).send(status);
  });
  app.get('/healthz', async (_request, reply) => reply.send({ status: 'ok' }));
  app.get('/debug/ca', async (_request, reply) => reply.send(options.debugInfo()));
  return app;
}
