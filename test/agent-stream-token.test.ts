/**
 * A stream's token is read once, into its credential, and taken out of the call's metadata: grpc-js keeps that
 * metadata for the whole call, and the token's bytes there are a small slice that keeps a whole 8 KiB Buffer pool
 * slab alive per stream (seen in a heap snapshot of the agent holding 2,000 streams). The streams themselves are
 * tested end to end elsewhere (agent-e2e, sds-conformance); this checks the metadata after the session is made.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { SDS_TOKEN_HEADER } from '../src/agent/credentials.js';
import type { FileWatcher } from '../src/agent/files.js';
import { ResourceProvider } from '../src/agent/resources.js';
import type { WorkloadSecrets } from '../src/agent/workload-secrets.js';
import { workloadJwt } from './agent-helpers.js';

function provider(): ResourceProvider {
  // Making a session reads only the metadata and the clock; secrets and files are used when a resource is opened.
  return new ResourceProvider({
    secrets: undefined as unknown as WorkloadSecrets,
    files: undefined as unknown as FileWatcher,
    mode: 'node',
    sidecarCredential: null,
    fileResourceDirs: [],
    log: pino({ level: 'silent' }),
    trustDomain: 'cluster.local',
  });
}

test('the token leaves the call metadata once the session holds it, from either header; other entries stay', () => {
  const token = workloadJwt('tok-metadata');
  const binary = new grpc.Metadata();
  binary.set(SDS_TOKEN_HEADER, Buffer.from(token));
  binary.set('x-envoy-peer', 'kept');
  const bearer = new grpc.Metadata();
  bearer.set('authorization', `Bearer ${token}`);
  const p = provider();
  for (const metadata of [binary, bearer]) {
    const session = p.session(metadata);
    try {
      assert.deepEqual(metadata.get(SDS_TOKEN_HEADER), []);
      assert.deepEqual(metadata.get('authorization'), []);
    } finally {
      session.close();
    }
  }
  assert.deepEqual(binary.get('x-envoy-peer'), ['kept']);
});

test('a refused token is taken out too, and the refusal still names what was wrong', async () => {
  const metadata = new grpc.Metadata();
  metadata.set(SDS_TOKEN_HEADER, Buffer.from('not-a-jwt'));
  const session = provider().session(metadata);
  try {
    assert.deepEqual(metadata.get(SDS_TOKEN_HEADER), []);
    await assert.rejects(session.proveIdentity(), (error: Error) => /bad workload token/.test(error.message));
  } finally {
    session.close();
  }
});
