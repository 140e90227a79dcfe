// Original file: proto/envoy/service/discovery/v3/discovery.proto

import type { Any as _google_protobuf_Any, Any__Output as _google_protobuf_Any__Output } from '../../../../google/protobuf/Any.js';
import type { ControlPlane as _envoy_config_core_v3_ControlPlane, ControlPlane__Output as _envoy_config_core_v3_ControlPlane__Output } from '../../../../envoy/config/core/v3/ControlPlane.js';
import type { ResourceError as _envoy_service_discovery_v3_ResourceError, ResourceError__Output as _envoy_service_discovery_v3_ResourceError__Output } from '../../../../envoy/service/discovery/v3/ResourceError.js';

export interface DiscoveryResponse {
  'version_info'?: (string);
  'resources'?: (_google_protobuf_Any)[];
  'canary'?: (boolean);
  'type_url'?: (string);
  'nonce'?: (string);
  'control_plane'?: (_envoy_config_core_v3_ControlPlane | null);
  'resource_errors'?: (_envoy_service_discovery_v3_ResourceError)[];
}

export interface DiscoveryResponse__Output {
  'version_info': (string);
  'resources': (_google_protobuf_Any__Output)[];
  'canary': (boolean);
  'type_url': (string);
  'nonce': (string);
  'control_plane': (_envoy_config_core_v3_ControlPlane__Output | null);
  'resource_errors': (_envoy_service_discovery_v3_ResourceError__Output)[];
}
