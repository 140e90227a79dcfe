// Original file: proto/meshca/federation/v1/trust_bundles.proto

import type { TrustDomainBundle as _meshca_federation_v1_TrustDomainBundle, TrustDomainBundle__Output as _meshca_federation_v1_TrustDomainBundle__Output } from '../../../meshca/federation/v1/TrustDomainBundle.js';

export interface TrustBundleSet {
  'trust_domain'?: (string);
  'aliases'?: (string)[];
  'bundles'?: (_meshca_federation_v1_TrustDomainBundle)[];
  'version'?: (string);
}

export interface TrustBundleSet__Output {
  'trust_domain': (string);
  'aliases': (string)[];
  'bundles': (_meshca_federation_v1_TrustDomainBundle__Output)[];
  'version': (string);
}
