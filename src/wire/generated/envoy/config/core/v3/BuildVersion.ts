// Original file: proto/envoy/config/core/v3/base.proto

import type { Struct as _google_protobuf_Struct, Struct__Output as _google_protobuf_Struct__Output } from '../../../../google/protobuf/Struct.js';

export interface BuildVersion {
  'metadata'?: (_google_protobuf_Struct | null);
}

export interface BuildVersion__Output {
  'metadata': (_google_protobuf_Struct__Output | null);
}
