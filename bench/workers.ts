/** Starts a TypeScript module as a worker thread: tsx's loader hooks do not reach workers on Node 20 by themselves. */
import { Worker } from 'node:worker_threads';

/** True when this file runs compiled (the test suite's .test-build/), where every module has a .js twin. */
const COMPILED = import.meta.url.endsWith('.js');

/** The module to run: its compiled twin when the bench itself runs compiled, and whether tsx must load it. */
export function runnableModule(moduleUrl: URL): { url: URL; tsx: boolean } {
  if (COMPILED && moduleUrl.pathname.endsWith('.ts')) return { url: new URL(moduleUrl.href.replace(/\.ts$/, '.js')), tsx: false };
  return { url: moduleUrl, tsx: moduleUrl.pathname.endsWith('.ts') };
}

export function startTsWorker(moduleUrl: URL, workerData: unknown): Worker {
  const { url, tsx } = runnableModule(moduleUrl);
  if (!tsx) return new Worker(url, { workerData });
  const boot = `import('tsx/esm/api').then((api) => { api.register(); return import(${JSON.stringify(url.href)}); })`;
  return new Worker(boot, { eval: true, workerData });
}

/** Resolves with the worker's next message. */
export function nextMessage<T>(worker: Worker): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onMessage = (message: T): void => {
      worker.off('error', onError);
      worker.off('exit', onExit);
      resolve(message);
    };
    const onError = (error: Error): void => {
      worker.off('message', onMessage);
      worker.off('exit', onExit);
      reject(error);
    };
    const onExit = (code: number): void => {
      worker.off('message', onMessage);
      worker.off('error', onError);
      reject(new Error(`worker exited with code ${code} before answering`));
    };
    worker.once('message', onMessage);
    worker.once('error', onError);
    worker.once('exit', onExit);
  });
}
