/**
 * The SDS Unix socket's path: parent directories are created, a socket left by a dead agent is removed, and a
 * socket a live agent still serves is never taken over (two agents on one socket would split the workloads).
 */
import { promises as fs } from 'node:fs';
import { connect } from 'node:net';
import * as path from 'node:path';
import { ConfigError } from '../config/env.js';

/** sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

function isListening(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ path: socketPath });
    const done = (live: boolean): void => {
      socket.destroy();
      resolve(live);
    };
    socket.setTimeout(1000, () => done(true)); // Accepted but silent: someone is there.
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** Makes `socketPath` ready to bind. Throws ConfigError with what is wrong and what to do about it. */
export async function prepareSocketPath(socketPath: string): Promise<string> {
  const absolute = path.resolve(socketPath);
  if (Buffer.byteLength(absolute) > MAX_SOCKET_PATH_BYTES) {
    throw new ConfigError(
      `SDS socket path ${absolute} is ${Buffer.byteLength(absolute)} bytes; Unix sockets allow at most ${MAX_SOCKET_PATH_BYTES}: choose a shorter --sds-socket`,
    );
  }
  try {
    await fs.mkdir(path.dirname(absolute), { recursive: true, mode: 0o755 });
  } catch (error) {
    throw new ConfigError(`cannot create the directory of --sds-socket ${socketPath}: ${(error as Error).message}`);
  }
  let stat;
  try {
    stat = await fs.lstat(absolute);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return absolute;
    throw new ConfigError(`cannot inspect --sds-socket ${socketPath}: ${(error as Error).message}`);
  }
  if (!stat.isSocket()) {
    throw new ConfigError(`--sds-socket ${socketPath} exists and is not a socket; remove it or choose another path`);
  }
  if (await isListening(absolute)) {
    throw new ConfigError(
      `another process (a live agent?) is serving on the SDS socket ${socketPath}; stop it first or choose another --sds-socket`,
    );
  }
  await fs.rm(absolute, { force: true });
  return absolute;
}
