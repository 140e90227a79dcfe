/**
 * This CA's own SPIFFE bundle: the signer's roots, with a `spiffe_sequence` that federated peers use to refuse
 * going back to an older bundle.
 *
 * The sequence is derived from the roots alone, because a CA may run as several replicas (a Kubernetes Deployment
 * behind one Service) that share no state and must serve the same sequence for the same roots, whichever replica a
 * peer reaches and however often they restart. It is
 *
 *     sequence = newest root's NotBefore + oldest root's NotBefore   (Unix seconds)
 *
 * which grows on each step of an ordinary root rotation: a newer root is added (the newest NotBefore grows, the
 * oldest stays) and later the old root is removed (the oldest NotBefore grows, the newest stays); replacing every
 * root by newer ones grows both. A count, a hash or a sum would not: removing a root lowers a sum and a count, and
 * a hash has no order. The value stays near 3.6e9 until far past 2100, well inside what JSON numbers carry exactly.
 *
 * Changes that are not a rotation step may not raise it: adding a root older than the newest one, removing the
 * newest, or removing a middle one of three. Within one process the sequence never goes down nor stays equal
 * across a change (it becomes the last one + 1, with a warning, since other replicas and a restart would derive
 * the formula's value instead and peers that saw the higher one will refuse it until it is passed).
 */
import type { Logger } from '../../log.js';
import { certificatesFromPem, parseCertificate, sameAuthorities, spiffeBundleOf, type ParsedCertificate, type SpiffeBundle } from '../../pki/index.js';
import type { OwnBundle } from './types.js';

/** The sequence the roots alone give: newest NotBefore + oldest NotBefore, in Unix seconds (see above). */
export function bundleSequenceOf(roots: readonly ParsedCertificate[]): number {
  if (roots.length === 0) throw new Error('a bundle sequence needs at least one root');
  const seconds = roots.map((root) => Math.floor(root.notBefore.getTime() / 1000));
  return Math.max(...seconds) + Math.min(...seconds);
}

/**
 * The sequence to publish after a change of the roots, given the one published before (undefined at start):
 * the derived value when it is greater, else previous + 1 (`derived: false`, replicas may then disagree).
 */
export function nextBundleSequence(previous: number | undefined, derived: number): { sequence: number; derived: boolean } {
  if (previous === undefined || derived > previous) return { sequence: derived, derived: true };
  return { sequence: previous + 1, derived: false };
}

/** The roots of a signer's trust bundle as a SPIFFE bundle with the derived sequence (also `meshca bundle show`). */
export function bundleOfRoots(trustDomain: string, roots: readonly ParsedCertificate[], fields: { sequence?: number; refreshHintSeconds?: number } = {}): SpiffeBundle {
  return spiffeBundleOf(trustDomain, roots, { sequence: fields.sequence ?? bundleSequenceOf(roots), ...(fields.refreshHintSeconds !== undefined ? { refreshHintSeconds: fields.refreshHintSeconds } : {}) });
}

function rootsOf(pem: string): ParsedCertificate[] {
  return certificatesFromPem(pem).map((der) => parseCertificate(der));
}

export interface OwnBundleOptions {
  /** `spiffe_refresh_hint`: how often peers should fetch it (--bundle-endpoint-refresh-hint). */
  refreshHintSeconds: number;
  logger?: Logger;
}

/** The part of a WorkloadSigner the own bundle reads. */
export interface RootsSource {
  trustBundlePem(): string;
  onChange(listener: () => void): () => void;
}

/**
 * The signer's roots as this trust domain's bundle, recomputed when the signer changes; only a change of the set
 * of roots (not of the signing certificate) makes a new bundle. `close` stops following the signer.
 */
export function ownBundle(signer: RootsSource, trustDomain: string, options: OwnBundleOptions): OwnBundle & { close(): void } {
  const { refreshHintSeconds, logger } = options;
  const roots = rootsOf(signer.trustBundlePem());
  let current = bundleOfRoots(trustDomain, roots, { refreshHintSeconds });
  const listeners = new Set<() => void>();
  const refresh = (): void => {
    let next: SpiffeBundle;
    try {
      const roots = rootsOf(signer.trustBundlePem());
      const candidate = spiffeBundleOf(trustDomain, roots);
      if (sameAuthorities(candidate, current)) return;
      const step = nextBundleSequence(current.sequence, bundleSequenceOf(roots));
      if (!step.derived) {
        logger?.warn(
          { trustDomain, previousSequence: current.sequence, sequence: step.sequence, derivedSequence: bundleSequenceOf(roots) },
          'the roots changed in a way their NotBefore dates do not order (not an add-newer-then-remove-oldest rotation): publishing the last sequence + 1; other replicas and a restart derive a lower one, which peers that saw this one refuse',
        );
      }
      next = bundleOfRoots(trustDomain, roots, { sequence: step.sequence, refreshHintSeconds });
    } catch (error) {
      logger?.error({ trustDomain, err: (error as Error).message }, 'the CA roots changed but do not make a SPIFFE bundle; keeping the previous bundle');
      return;
    }
    current = next;
    logger?.info({ trustDomain, sequence: next.sequence, authorities: next.x509Authorities.length }, 'own SPIFFE bundle changed');
    for (const listener of [...listeners]) listener();
  };
  const unsubscribe = signer.onChange(refresh);
  return {
    current: () => current,
    onChange: (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    close: unsubscribe,
  };
}
