/** Small HTTP helpers shared by the stand-in servers (test code only). */
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Tracks every socket of a server so that `down` / `close()` can destroy them. */
export class SocketTracker {
  readonly sockets = new Set<Socket>();

  constructor(server: HttpServer | HttpsServer, isDown: () => boolean) {
    // 'connection' fires for the raw TCP socket (before TLS for https servers).
    server.on('connection', (socket: Socket) => {
      if (isDown()) {
        socket.destroy();
        return;
      }
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  destroyAll(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }
}

export async function readBody(req: IncomingMessage, limit = 8 * 1024 * 1024): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buf = chunk as Buffer;
    size += buf.length;
    if (size > limit) throw new Error('request body too large');
    chunks.push(buf);
  }
  return Buffer.concat(chunks);
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': String(Buffer.byteLength(text)),
    ...headers,
  });
  res.end(text);
}

export function sendRaw(res: ServerResponse, status: number, body: string | Buffer, contentType: string): void {
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': String(Buffer.byteLength(body)) });
  res.end(body);
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `await server.listen(0, host)` and return the bound port. */
export function listen(server: HttpServer | HttpsServer, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => {
      server.off('error', reject);
      const addr = server.address();
      if (addr === null || typeof addr === 'string') {
        reject(new Error('unexpected server address'));
        return;
      }
      resolve(addr.port);
    });
  });
}

export function closeServer(server: HttpServer | HttpsServer, tracker: SocketTracker): Promise<void> {
  return new Promise((resolve) => {
    tracker.destroyAll();
    server.close(() => resolve());
    server.closeAllConnections?.();
  });
}
