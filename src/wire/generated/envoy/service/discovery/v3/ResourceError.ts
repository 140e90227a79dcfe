// Original file: proto/envoy/service/discovery/v3/discovery.proto

import type { ResourceName as _envoy_service_discovery_v3_ResourceName, ResourceName__Output as _envoy_service_discovery_v3_ResourceName__Output } from '../../../../envoy/service/discovery/v3/ResourceName.js';
import type { Status as _google_rpc_Status, Status__Output as _google_rpc_Status__Output } from '../../../../google/rpc/Status.js';

export interface ResourceError {
  'resource_name'?: (_envoy_service_discovery_v3_ResourceName | null);
  'error_detail'?: (_google_rpc_Status | null);
}

export interface ResourceError__Output {
  'resource_name': (_envoy_service_discovery_v3_ResourceName__Output | null);
  'error_detail': (_google_rpc_Status__Output | null);
}
