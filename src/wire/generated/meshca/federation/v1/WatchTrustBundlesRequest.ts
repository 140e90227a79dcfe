// Original file: proto/meshca/federation/v1/trust_bundles.proto


export interface WatchTrustBundlesRequest {
}

export interface WatchTrustBundlesRequest__Output {
}
