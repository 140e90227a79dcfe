/** One signing-core worker thread: builds its own CA from PEM, warms up, then issues for the agreed time. */
import { parentPort, workerData } from 'node:worker_threads';
import { issueLoop, type CoreWorkerData, type CoreWorkerMessage } from './core.js';
import { authorityFromPems } from './fixtures.js';

const data = workerData as CoreWorkerData;
const port = parentPort!;
const authority = authorityFromPems(data.pems);
await issueLoop(authority, data.csrs, Math.min(0.3, data.seconds / 4));
port.once('message', () => {
  void issueLoop(authority, data.csrs, data.seconds).then((result) => port.postMessage({ type: 'done', ...result } satisfies CoreWorkerMessage));
});
port.postMessage({ type: 'ready' } satisfies CoreWorkerMessage);
