/**
 * An SDS client that stops reading, for backpressure tests. grpc-js cannot play it: its client keeps taking data
 * from the socket (and granting HTTP/2 flow-control window) whatever the application reads, so a paused grpc-js
 * stream still drains the server into the client's memory. This one speaks just enough HTTP/2 (RFC 9113) over
 * the agent's Unix socket to start one StreamSecrets call, then takes nothing from the socket and grants no
 * window, like an Envoy whose main thread is stuck, until `startReading()`.
 */
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { SDS_TOKEN_HEADER } from '../src/agent/credentials.js';
import { sdsService, type DiscoveryRequest, type DiscoveryResponse, type Init } from '../src/wire/protos.js';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
const DATA = 0x0;
const HEADERS = 0x1;
const RST_STREAM = 0x3;
const SETTINGS = 0x4;
const PING = 0x6;
const GOAWAY = 0x7;
const WINDOW_UPDATE = 0x8;
const FLAG_ACK = 0x1;
const FLAG_END_STREAM = 0x1;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const STREAM_ID = 1;
const FRAME_HEADER_BYTES = 9;
const GRPC_PREFIX_BYTES = 5;

function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId, 5);
  return Buffer.concat([header, payload]);
}

/** An HPACK integer with a 7-bit prefix (RFC 7541 §5.1), for string lengths. */
function hpackLength(value: number): Buffer {
  if (value < 127) return Buffer.from([value]);
  const bytes = [127];
  let rest = value - 127;
  while (rest >= 128) {
    bytes.push((rest & 0x7f) | 0x80);
    rest >>= 7;
  }
  bytes.push(rest);
  return Buffer.from(bytes);
}

/** "Literal header field without indexing, new name", no Huffman (RFC 7541 §6.2.2): needs no HPACK table. */
function literalHeader(name: string, value: string): Buffer {
  const nameBytes = Buffer.from(name);
  const valueBytes = Buffer.from(value);
  return Buffer.concat([Buffer.from([0]), hpackLength(nameBytes.length), nameBytes, hpackLength(valueBytes.length), valueBytes]);
}

function grpcMessage(body: Buffer): Buffer {
  const prefix = Buffer.alloc(GRPC_PREFIX_BYTES);
  prefix.writeUInt32BE(body.length, 1);
  return Buffer.concat([prefix, body]);
}

export class StalledSdsStream {
  /** Responses decoded since `startReading()`. */
  readonly responses: DiscoveryResponse[] = [];
  ended = false;
  private unparsed = Buffer.alloc(0);
  private messageBytes = Buffer.alloc(0);

  private constructor(private readonly socket: Socket) {}

  /** Connects, sends the preface, the call's headers (with the workload token) and `request`, then reads nothing. */
  static async open(socketPath: string, token: string, request: Init<DiscoveryRequest>): Promise<StalledSdsStream> {
    const socket = connect({ path: socketPath });
    await once(socket, 'connect');
    socket.pause();
    const headers = Buffer.concat(
      [
        [':method', 'POST'],
        [':scheme', 'http'],
        [':path', '/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets'],
        [':authority', 'localhost'],
        ['content-type', 'application/grpc'],
        ['te', 'trailers'],
        [SDS_TOKEN_HEADER, Buffer.from(token).toString('base64')],
      ].map(([name, value]) => literalHeader(name!, value!)),
    );
    socket.write(
      Buffer.concat([
        PREFACE,
        frame(SETTINGS, 0, 0),
        frame(HEADERS, FLAG_END_HEADERS, STREAM_ID, headers),
        frame(DATA, 0, STREAM_ID, grpcMessage(sdsService.StreamSecrets.requestSerialize(request))),
      ]),
    );
    return new StalledSdsStream(socket);
  }

  /** From now on behaves: reads every frame, answers SETTINGS and PING, and grants window for what it read. */
  startReading(): void {
    this.socket.on('data', (chunk: Buffer) => this.receive(chunk));
    this.socket.on('close', () => (this.ended = true));
    this.socket.resume();
  }

  close(): void {
    this.socket.destroy();
  }

  private receive(chunk: Buffer): void {
    this.unparsed = Buffer.concat([this.unparsed, chunk]);
    while (this.unparsed.length >= FRAME_HEADER_BYTES) {
      const length = this.unparsed.readUIntBE(0, 3);
      if (this.unparsed.length < FRAME_HEADER_BYTES + length) return;
      const type = this.unparsed[3]!;
      const flags = this.unparsed[4]!;
      const streamId = this.unparsed.readUInt32BE(5) & 0x7fffffff;
      const payload = this.unparsed.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length);
      this.unparsed = this.unparsed.subarray(FRAME_HEADER_BYTES + length);
      this.onFrame(type, flags, streamId, payload);
    }
  }

  private onFrame(type: number, flags: number, streamId: number, payload: Buffer): void {
    switch (type) {
      case SETTINGS:
        if (!(flags & FLAG_ACK)) this.socket.write(frame(SETTINGS, FLAG_ACK, 0));
        return;
      case PING:
        if (!(flags & FLAG_ACK)) this.socket.write(frame(PING, FLAG_ACK, 0, payload));
        return;
      case DATA: {
        if (streamId !== STREAM_ID) return;
        let data = payload;
        if (flags & FLAG_PADDED) data = data.subarray(1, data.length - data[0]!);
        this.messageBytes = Buffer.concat([this.messageBytes, data]);
        this.takeMessages();
        if (payload.length > 0) {
          // Flow control counts the whole payload, padding included, on the stream and on the connection.
          const increment = Buffer.alloc(4);
          increment.writeUInt32BE(payload.length);
          this.socket.write(Buffer.concat([frame(WINDOW_UPDATE, 0, 0, increment), frame(WINDOW_UPDATE, 0, STREAM_ID, increment)]));
        }
        if (flags & FLAG_END_STREAM) this.ended = true;
        return;
      }
      case HEADERS:
        if (flags & FLAG_END_STREAM) this.ended = true; // Trailers: the server ended the call.
        return;
      case RST_STREAM:
      case GOAWAY:
        this.ended = true;
        return;
      default:
        return;
    }
  }

  private takeMessages(): void {
    while (this.messageBytes.length >= GRPC_PREFIX_BYTES) {
      const length = this.messageBytes.readUInt32BE(1);
      if (this.messageBytes.length < GRPC_PREFIX_BYTES + length) return;
      const body = this.messageBytes.subarray(GRPC_PREFIX_BYTES, GRPC_PREFIX_BYTES + length);
      this.messageBytes = this.messageBytes.subarray(GRPC_PREFIX_BYTES + length);
      this.responses.push(sdsService.StreamSecrets.responseDeserialize(Buffer.from(body)));
    }
  }
}
