/** A TypeScript child process driven over Node's IPC channel, one request and one answer at a time. */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { stopChild, trackChild } from './children.js';
import { runnableModule } from './workers.js';

export interface IpcChild<Command, Message> {
  /** The child's process ID (for its CPU time in /proc). */
  readonly pid: number;
  /** The child's next message (e.g. its first 'ready'). */
  next(): Promise<Message>;
  request(command: Command): Promise<Message>;
  send(command: Command): void;
  close(): Promise<void>;
}

export function forkTs<Command, Message>(moduleUrl: URL, args: string[], nodeArgs: string[] = []): IpcChild<Command, Message> {
  const { url, tsx } = runnableModule(moduleUrl);
  const child = trackChild(fork(fileURLToPath(url), args, { execArgv: [...(tsx ? ['--import', 'tsx'] : []), ...nodeArgs], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  const next = (): Promise<Message> =>
    new Promise((resolve, reject) => {
      const onMessage = (message: Message): void => {
        child.off('exit', onExit);
        resolve(message);
      };
      const onExit = (code: number | null): void => {
        child.off('message', onMessage);
        reject(new Error(`${fileURLToPath(moduleUrl)} exited (${code}) unexpectedly`));
      };
      child.once('message', onMessage);
      child.once('exit', onExit);
    });
  return {
    pid: child.pid!,
    next,
    request(command) {
      const answer = next();
      child.send(command as object);
      return answer;
    },
    send(command) {
      if (child.connected) child.send(command as object);
    },
    // The child is asked to exit first (a profile, if one is being taken, is written on a clean exit).
    close: () => stopChild(child, 3000, 3000),
  };
}
