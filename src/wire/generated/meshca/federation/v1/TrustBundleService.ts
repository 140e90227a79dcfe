// Original file: proto/meshca/federation/v1/trust_bundles.proto

import type * as grpc from '@grpc/grpc-js'
import type { MethodDefinition } from '@grpc/proto-loader'
import type { TrustBundleSet as _meshca_federation_v1_TrustBundleSet, TrustBundleSet__Output as _meshca_federation_v1_TrustBundleSet__Output } from '../../../meshca/federation/v1/TrustBundleSet.js';
import type { WatchTrustBundlesRequest as _meshca_federation_v1_WatchTrustBundlesRequest, WatchTrustBundlesRequest__Output as _meshca_federation_v1_WatchTrustBundlesRequest__Output } from '../../../meshca/federation/v1/WatchTrustBundlesRequest.js';

export interface TrustBundleServiceClient extends grpc.Client {
  WatchTrustBundles(argument: _meshca_federation_v1_WatchTrustBundlesRequest, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<_meshca_federation_v1_TrustBundleSet__Output>;
  WatchTrustBundles(argument: _meshca_federation_v1_WatchTrustBundlesRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<_meshca_federation_v1_TrustBundleSet__Output>;
  watchTrustBundles(argument: _meshca_federation_v1_WatchTrustBundlesRequest, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<_meshca_federation_v1_TrustBundleSet__Output>;
  watchTrustBundles(argument: _meshca_federation_v1_WatchTrustBundlesRequest, options?: grpc.CallOptions): grpc.ClientReadableStream<_meshca_federation_v1_TrustBundleSet__Output>;
  
}

export interface TrustBundleServiceHandlers extends grpc.UntypedServiceImplementation {
  WatchTrustBundles: grpc.handleServerStreamingCall<_meshca_federation_v1_WatchTrustBundlesRequest__Output, _meshca_federation_v1_TrustBundleSet>;
  
}

export interface TrustBundleServiceDefinition extends grpc.ServiceDefinition {
  WatchTrustBundles: MethodDefinition<_meshca_federation_v1_WatchTrustBundlesRequest, _meshca_federation_v1_TrustBundleSet, _meshca_federation_v1_WatchTrustBundlesRequest__Output, _meshca_federation_v1_TrustBundleSet__Output>
}
