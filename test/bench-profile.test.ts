/**
 * The bench's CPU budget per stage (bench/cpu-profile.ts) on a hand-made profile: each sample goes to the stage
 * of its own frame or of its nearest ancestor that names one, idle time is kept apart, and the window cuts by the
 * profile's own timestamps.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { attributeProfile, classifyFrame, type CpuProfile } from '../bench/cpu-profile.js';

const ROOT = '/repo';
const frame = (functionName: string, url: string): { functionName: string; url: string } => ({ functionName, url });

/**
 * (root)
 * ├─ onStreamRead (node:internal/stream_base_commons)                      id 2: tls
 * │  └─ onSessionHeaders (@grpc/grpc-js server-interceptors)              id 3: grpc
 * │     └─ createCertificate (src/server/ca-service.ts)                   id 4: handler
 * │        ├─ checkedCsr (src/pki/csr.ts)                                 id 5: csr
 * │        │  ├─ verify (node:internal/crypto/sig)                        id 6: → csr
 * │        │  └─ children (src/pki/der.ts)                                id 7: → csr
 * │        ├─ check (dist/ca/issued-check.js)                             id 8: check
 * │        │  └─ children (dist/pki/der.js)                               id 9: → check
 * │        └─ jwtVerify (node_modules/jose/...)                           id 10: auth
 * │           └─ verify (node:internal/crypto/sig)                        id 11: → auth
 * │  └─ write (node:internal/http2/core), under grpc-js                  id 12: tls
 * ├─ (garbage collector)                                                   id 13: gc
 * ├─ (program)                                                             id 14: native
 * ├─ (idle)                                                                id 15: idle
 * └─ processTicksAndRejections (node:internal/process/task_queues)        id 16: → other
 */
const PROFILE: CpuProfile = {
  nodes: [
    { id: 1, callFrame: frame('(root)', ''), children: [2, 13, 14, 15, 16] },
    { id: 2, callFrame: frame('onStreamRead', 'node:internal/stream_base_commons'), children: [3] },
    { id: 3, callFrame: frame('onSessionHeaders', `file://${ROOT}/node_modules/@grpc/grpc-js/build/src/server-interceptors.js`), children: [4, 12] },
    { id: 4, callFrame: frame('createCertificate', `file://${ROOT}/src/server/ca-service.ts`), children: [5, 8, 10] },
    { id: 5, callFrame: frame('checkedCsr', `file://${ROOT}/src/pki/csr.ts`), children: [6, 7] },
    { id: 6, callFrame: frame('verify', 'node:internal/crypto/sig') },
    { id: 7, callFrame: frame('children', `file://${ROOT}/src/pki/der.ts`) },
    { id: 8, callFrame: frame('check', `file://${ROOT}/dist/ca/issued-check.js`), children: [9] },
    { id: 9, callFrame: frame('children', `file://${ROOT}/dist/pki/der.js`) },
    { id: 10, callFrame: frame('jwtVerify', `file://${ROOT}/node_modules/jose/dist/node/esm/jwt/verify.js`), children: [11] },
    { id: 11, callFrame: frame('verify', 'node:internal/crypto/sig') },
    { id: 12, callFrame: frame('write', 'node:internal/http2/core') },
    { id: 13, callFrame: frame('(garbage collector)', '') },
    { id: 14, callFrame: frame('(program)', '') },
    { id: 15, callFrame: frame('(idle)', '') },
    { id: 16, callFrame: frame('processTicksAndRejections', 'node:internal/process/task_queues') },
  ],
  startTime: 1000,
  // Sample i lasts until sample i+1; the last until endTime.
  samples: [6, 7, 9, 11, 12, 4, 3, 2, 13, 14, 15, 16],
  timeDeltas: [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110],
  endTime: 1000 + 660 + 120,
};

describe('bench CPU budget per stage', () => {
  it('gives each sample to its own frame or its nearest named ancestor, idle apart', () => {
    const result = attributeProfile(PROFILE, undefined);
    // Sample times: 1000, 1010, 1030, 1060, 1100, 1150, 1210, 1280, 1360, 1450, 1550, 1660; end 1780.
    assert.deepEqual(result.stageUs, {
      csr: 10 + 20, // crypto verify and a DER helper under csr.ts
      check: 30, // der.js under issued-check.js (compiled paths count as src/)
      auth: 40, // crypto under jose
      tls: 50 + 80, // http2 write under grpc-js; the socket read at the root
      handler: 60,
      grpc: 70,
      gc: 90,
      native: 100,
      other: 120, // a Node internal with no named ancestor
      sign: 0,
      metrics: 0,
      audit: 0,
    });
    assert.equal(result.idleUs, 110);
    assert.equal(result.busyUs, 780 - 110);
    assert.equal(result.samples, 12);
  });

  it('counts only the samples inside the window', () => {
    const result = attributeProfile(PROFILE, { fromUs: 1030, toUs: 1150 });
    assert.equal(result.samples, 3);
    assert.equal(result.stageUs.check, 30);
    assert.equal(result.stageUs.auth, 40);
    assert.equal(result.stageUs.tls, 50);
    assert.equal(result.busyUs, 120);
  });

  it('names pino, prom-client and meshca files by their module', () => {
    assert.equal(classifyFrame(frame('write', `file://${ROOT}/node_modules/sonic-boom/index.js`)), 'audit');
    assert.equal(classifyFrame(frame('info', `file://${ROOT}/node_modules/pino/lib/proto.js`)), 'audit');
    assert.equal(classifyFrame(frame('inc', `file://${ROOT}/node_modules/prom-client/lib/counter.js`)), 'metrics');
    assert.equal(classifyFrame(frame('issue', `file://${ROOT}/dist/pki/issue.js`)), 'sign');
    assert.equal(classifyFrame(frame('redactRecord', `file://${ROOT}/dist/log.js`)), 'audit');
    assert.equal(classifyFrame(frame('authenticate', `file://${ROOT}/dist/authn/jwt.js`)), 'auth');
    assert.equal(classifyFrame(frame('once', `file://${ROOT}/dist/util/once.js`)), 'skip');
    assert.equal(classifyFrame(frame('emit', 'node:events')), 'skip');
  });
});
