// Original file: proto/envoy/extensions/transport_sockets/tls/v3/common.proto


export interface SystemRootCerts {
}

export interface SystemRootCerts__Output {
}
