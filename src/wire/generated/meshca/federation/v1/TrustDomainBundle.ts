// Original file: proto/meshca/federation/v1/trust_bundles.proto

import type { Long } from '@grpc/proto-loader';

export interface TrustDomainBundle {
  'trust_domain'?: (string);
  'x509_authorities'?: (Buffer | Uint8Array | string)[];
  'sequence'?: (number | string | Long);
}

export interface TrustDomainBundle__Output {
  'trust_domain': (string);
  'x509_authorities': (Buffer)[];
  'sequence': (string);
}
