/**
 * The gRPC part of the trust-bundle watcher (trust-bundles.ts): WatchTrustBundles over the agent's channel to the
 * CA (ca-client.ts: same address, TLS verified against the mesh root and the CA's DNS name, same reconnect
 * backoff). The bundles are public, so the call carries no workload token.
 */
import * as grpc from '@grpc/grpc-js';
import { TrustBundleServiceClient, type TrustBundleSetMessage } from '../wire/protos.js';
import type { GrpcCaClient } from './ca-client.js';
import type { TrustBundleSource, WatchEnd } from './trust-bundles.js';

export function grpcTrustBundleSource(ca: GrpcCaClient): TrustBundleSource {
  return {
    address: ca.address,
    watch(handlers) {
      // The CA client's current channel (a new one after a mesh root change): one connection to the CA, not two.
      const client = new TrustBundleServiceClient(ca.address, grpc.credentials.createInsecure(), { channelOverride: ca.channel() });
      const call = client.WatchTrustBundles({});
      let ended = false;
      const end = (outcome: WatchEnd): void => {
        if (ended) return;
        ended = true;
        handlers.end(outcome);
      };
      call.on('data', (message: TrustBundleSetMessage) => handlers.message(message));
      call.on('error', (error: grpc.ServiceError) => end({ code: error.code, details: error.details || error.message }));
      call.on('status', (status: grpc.StatusObject) => {
        if (status.code === grpc.status.OK) end(null);
      });
      return {
        cancel: () => {
          ended = true;
          call.cancel();
        },
      };
    },
  };
}
