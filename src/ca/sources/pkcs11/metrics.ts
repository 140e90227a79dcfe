/**
 * meshca_pkcs11_sign_duration_seconds{result}: how long the token takes per signature (once per intermediate in
 * intermediate mode, once per workload certificate in direct mode), and how often it fails.
 */
import { Histogram, type Registry } from 'prom-client';

export const PKCS11_SIGN_METRIC = 'meshca_pkcs11_sign_duration_seconds';

/** The observer Pkcs11Key reports to, on the registry's histogram (made once per registry). */
export function tokenSignObserver(registry: Registry | undefined): ((seconds: number, outcome: 'ok' | 'unavailable' | 'error') => void) | undefined {
  if (!registry) return undefined;
  const histogram =
    (registry.getSingleMetric(PKCS11_SIGN_METRIC) as Histogram<'result'> | undefined) ??
    new Histogram({
      name: PKCS11_SIGN_METRIC,
      help: 'Time the PKCS#11 token took per signature, by result (ok, unavailable: the token is gone, error)',
      labelNames: ['result'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry],
    });
  return (seconds, outcome) => histogram.observe({ result: outcome }, seconds);
}
