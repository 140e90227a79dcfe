/**
 * The monitoring HTTP server (istiod's 15014): /metrics for Prometheus, /ready backed by the signing self-probe,
 * /healthz for liveness, /debug/ca describing what the CA signs with (no secrets) and /debug/decisions, the recent
 * CreateCertificate decisions (`?identity=spiffe://...` for one identity, `?limit=N`, newest first), and
 * /debug/federation, the bundles of the trust domains the CA federates with (age, sequence, last error).
 */
import Fastify, { type FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import { parseDecisionQuery, type DecisionQuery, type DecisionsAnswer } from './decisions.js';

export interface MonitoringOptions {
  /** A prom-client Registry, or anything that renders the exposition text the same way (the workers' sum). */
  registry: Pick<Registry, 'metrics' | 'contentType'>;
  ready(): Promise<{ ready: boolean }>;
  debugInfo(): Record<string, unknown>;
  decisions(query: DecisionQuery): DecisionsAnswer | Promise<DecisionsAnswer>;
  /** /debug/federation: each federated trust domain's bundle status; the route answers 404 without it. */
  federation?: () => unknown;
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
  app.get('/debug/decisions', async (request, reply) => {
    const query = parseDecisionQuery(request.query as Record<string, unknown>);
    if ('error' in query) return reply.code(400).send({ error: query.error });
    return reply.send(await options.decisions(query));
  });
  app.get('/debug/federation', async (_request, reply) => {
    if (!options.federation) return reply.code(404).send({ error: 'this CA federates with no other trust domain (see --federate-with)' });
    return reply.send(options.federation());
  });
  return app;
}
