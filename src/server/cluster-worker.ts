/**
 * One worker of `meshca ca --workers N`: serves the gRPC API on the port the primary process shares with all
 * workers. It signs in-process with the material the primary sends (or forwards to the primary when the key
 * source signs remotely), asks the primary to review tokens it has not cached and to check impersonation
 * requests against its pod caches, and answers the primary's
 * requests for its metrics. It lives as long as the primary: when the channel closes, it stops.
 */
import type { Registry } from 'prom-client';
import type { AuthOutcome, AuthenticatorName, Caller, KubernetesCaller, NodeCheckRequest, NodeCheckVerdict } from '../authn/index.js';
import { SnapshotSigner } from '../ca/snapshot-signer.js';
import type { CaServerConfig } from '../config/ca.js';
import type { Logger } from '../log.js';
import { WorkloadId } from '../pki/index.js';
import { workerPeer, type IpcMessage } from './cluster-ipc.js';
import { startCaServer, type CaServer } from './index.js';
import { decodeTrustBundleNotice, NoticeFeed } from './trust-bundles.js';

/**
 * A TokenReview verdict as it crosses from the primary to a worker. A WorkloadId does not survive the structured
 * clone of the IPC channel as one (only its fields would), so it travels as its URI and the worker parses it
 * again with WorkloadId.parse: an identity is never rebuilt from a plain object.
 */
export type ReviewOutcomeMessage =
  | { kind: 'ok'; caller: Omit<Caller, 'identity'> & { identity: string } }
  | Exclude<AuthOutcome, { kind: 'ok' }>;

export function encodeReviewOutcome(outcome: AuthOutcome): ReviewOutcomeMessage {
  if (outcome.kind !== 'ok') return outcome;
  return { kind: 'ok', caller: { ...outcome.caller, identity: outcome.caller.identity.uri } };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const AUTHENTICATOR_NAMES: readonly AuthenticatorName[] = ['client-cert', 'tokenreview', 'jwt'];

function decodeKubernetesCaller(value: unknown): KubernetesCaller | undefined {
  if (!isRecord(value)) return undefined;
  const { clusterId, namespace, serviceAccount, podName, podUid } = value;
  if (typeof clusterId !== 'string' || typeof namespace !== 'string' || typeof serviceAccount !== 'string') return undefined;
  if ((podName !== undefined && typeof podName !== 'string') || (podUid !== undefined && typeof podUid !== 'string')) return undefined;
  return { clusterId, namespace, serviceAccount, ...(podName !== undefined ? { podName } : {}), ...(podUid !== undefined ? { podUid } : {}) };
}

/** Reads the primary's answer strictly; anything malformed fails closed as `unavailable`. */
export function decodeReviewOutcome(value: unknown, trustDomain: string): AuthOutcome {
  const malformed = (why: string): AuthOutcome => ({ kind: 'unavailable', reason: `the token could not be reviewed: the CA primary's answer ${why}` });
  if (!isRecord(value)) return malformed('is not an object');
  const { kind } = value;
  if (kind === 'skip' || kind === 'denied' || kind === 'unavailable') {
    return typeof value.reason === 'string' ? { kind, reason: value.reason } : malformed('has no reason');
  }
  if (kind !== 'ok' || !isRecord(value.caller)) return malformed('has no verdict');
  const { authenticator, identity, subject, kubernetes } = value.caller;
  if (typeof authenticator !== 'string' || !AUTHENTICATOR_NAMES.includes(authenticator as AuthenticatorName)) return malformed('names no authenticator');
  if (typeof identity !== 'string' || typeof subject !== 'string') return malformed('has no identity or subject');
  let workload: WorkloadId;
  try {
    workload = WorkloadId.parse(identity);
  } catch (error) {
    return malformed(`names no valid workload identity: ${(error as Error).message}`);
  }
  if (workload.trustDomain !== trustDomain) return malformed(`is for trust domain "${workload.trustDomain}", not "${trustDomain}"`);
  const k8s = kubernetes === undefined ? undefined : decodeKubernetesCaller(kubernetes);
  if (kubernetes !== undefined && !k8s) return malformed('has malformed Kubernetes facts');
  return {
    kind: 'ok',
    caller: { authenticator: authenticator as AuthenticatorName, identity: workload, subject, ...(k8s ? { kubernetes: k8s } : {}) },
  };
}

export async function runCaWorker(options: { config: CaServerConfig; logger: Logger; registry: Registry }): Promise<void> {
  const { config, logger, registry } = options;
  const send = process.send?.bind(process);
  if (!send) throw new Error('a CA worker must be started by the CA primary process (meshca ca --workers N)');

  let signer: SnapshotSigner | undefined;
  let server: CaServer | undefined;
  /** Set once the primary said what to serve; notices before that are older than its answer and are dropped. */
  let trustBundles: NoticeFeed | undefined;
  let stopping: Promise<void> | undefined;
  let failedToStart = false;
  const stop = (code: number): Promise<void> =>
    (stopping ??= (async () => {
      await server?.close();
      await signer?.close();
      process.exit(code);
    })());

  const peer = workerPeer((message: IpcMessage) => send(message), {
    metrics: () => registry.getMetricsAsJSON(),
    decisions: (query) => server?.decisions.query(query) ?? { capacity: 0, held: 0, decisions: [] },
  }, (notice) => {
    switch (notice.name) {
      case 'snapshot':
        try {
          signer?.replace(notice.params);
        } catch (error) {
          // Keep signing with what this worker has; the primary validated the new material, so this is a fault here.
          logger.error({ err: (error as Error).message }, 'could not take the new CA material from the primary; still signing with the previous one');
        }
        return;
      case 'trustBundles':
        try {
          trustBundles?.replace(decodeTrustBundleNotice(notice.params));
        } catch (error) {
          logger.error({ err: (error as Error).message }, 'could not take the new trust bundles from the primary; still serving the previous ones');
        }
        return;
      case 'shutdown':
        void stop(0);
        return;
    }
  });
  process.on('message', (message) => peer.receive(message));
  // The primary is gone (crashed or killed): nothing can be signed or reviewed any more.
  process.on('disconnect', () => {
    peer.close();
    if (!failedToStart && !stopping) logger.error('the CA primary process is gone; this worker stops');
    void stop(1);
  });
  // A signal sent to the whole process group (Ctrl-C): the primary coordinates the shutdown.
  process.on('SIGINT', () => undefined);
  process.on('SIGTERM', () => void stop(0));

  try {
    signer = new SnapshotSigner(await peer.call('snapshot', null), (request) => peer.call('sign', request));
    const bundles = await peer.call('trustBundles', null);
    if (bundles !== null) trustBundles = new NoticeFeed(decodeTrustBundleNotice(bundles));
    server = await startCaServer({
      config,
      signer,
      logger,
      registry,
      ...(trustBundles ? { trustBundles } : {}),
      worker: {
        reviewToken: (clusterId: string, token: string) =>
          peer.call('review', { clusterId, token }).then(
            (answer): AuthOutcome => decodeReviewOutcome(answer, config.trustDomain),
            (error: unknown): AuthOutcome => ({ kind: 'unavailable', reason: `the token could not be reviewed: ${(error as Error).message}` }),
          ),
        checkNode: (request: NodeCheckRequest) =>
          peer.call('checkNode', request).catch(
            (error: unknown): NodeCheckVerdict => ({ kind: 'unavailable', reason: `the node check could not be made: ${(error as Error).message}` }),
          ),
      },
    });
  } catch (error) {
    // The primary prints the one line and exits; this worker only reports why it could not start.
    failedToStart = true;
    peer.notify('fatal', { message: (error as Error).message });
    // The primary stops this worker once it has read why; exit anyway should that never happen.
    setTimeout(() => process.exit(1), 5000);
    return;
  }
  peer.notify('listening', { grpcPort: server.grpcPort });
}
