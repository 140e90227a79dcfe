import type * as grpc from '@grpc/grpc-js';
import type { MessageTypeDefinition } from '@grpc/proto-loader';

import type { TrustBundleServiceClient as _meshca_federation_v1_TrustBundleServiceClient, TrustBundleServiceDefinition as _meshca_federation_v1_TrustBundleServiceDefinition } from './meshca/federation/v1/TrustBundleService.js';
import type { TrustBundleSet as _meshca_federation_v1_TrustBundleSet, TrustBundleSet__Output as _meshca_federation_v1_TrustBundleSet__Output } from './meshca/federation/v1/TrustBundleSet.js';
import type { TrustDomainBundle as _meshca_federation_v1_TrustDomainBundle, TrustDomainBundle__Output as _meshca_federation_v1_TrustDomainBundle__Output } from './meshca/federation/v1/TrustDomainBundle.js';
import type { WatchTrustBundlesRequest as _meshca_federation_v1_WatchTrustBundlesRequest, WatchTrustBundlesRequest__Output as _meshca_federation_v1_WatchTrustBundlesRequest__Output } from './meshca/federation/v1/WatchTrustBundlesRequest.js';

type SubtypeConstructor<Constructor extends new (...args: any) => any, Subtype> = {
  new(...args: ConstructorParameters<Constructor>): Subtype;
};

export interface ProtoGrpcType {
  meshca: {
    federation: {
      v1: {
        TrustBundleService: SubtypeConstructor<typeof grpc.Client, _meshca_federation_v1_TrustBundleServiceClient> & { service: _meshca_federation_v1_TrustBundleServiceDefinition }
        TrustBundleSet: MessageTypeDefinition<_meshca_federation_v1_TrustBundleSet, _meshca_federation_v1_TrustBundleSet__Output>
        TrustDomainBundle: MessageTypeDefinition<_meshca_federation_v1_TrustDomainBundle, _meshca_federation_v1_TrustDomainBundle__Output>
        WatchTrustBundlesRequest: MessageTypeDefinition<_meshca_federation_v1_WatchTrustBundlesRequest, _meshca_federation_v1_WatchTrustBundlesRequest__Output>
      }
    }
  }
}

