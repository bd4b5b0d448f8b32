// A fake WebSocket and server side for the client's unit tests: it records the
// frames the client sends and lets a test answer, push and close.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { RESPONSE_BIT, decodeFrame, encodeFrame } from "@shared/frame";
import type { Frame } from "@shared/frame";
import type { SocketLike } from "@shared/client";

export class FakeSocket implements SocketLike {
  binaryType = "blob";
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  readonly sent: Frame[] = [];
  closedByClient: { code?: number; reason?: string } | null = null;

  constructor(readonly url: string, readonly protocol: string) {}

  send(data: Uint8Array): void {
    if (this.readyState !== 1) {
      throw new Error("send on a socket that is not open");
    }
    this.sent.push(decodeFrame(data));
  }

  close(code?: number, reason?: string): void {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // --- the server's side ---

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  /** The server (or the network) ends the connection. */
  drop(code = 1006): void {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }

  deliver(bytes: Uint8Array): void {
    const copy = bytes.slice();
    this.onmessage?.({ data: copy.buffer });
  }

  /** The frames sent with `cmd`, in order. */
  sentOf(cmd: number): Frame[] {
    return this.sent.filter((f) => f.cmd === cmd);
  }

  last(cmd: number): Frame {
    const frames = this.sentOf(cmd);
    if (frames.length === 0) {
      throw new Error(`no frame with cmd ${cmd} was sent`);
    }
    return frames[frames.length - 1];
  }

  /** Answer `request` with a body of `schema`. */
  reply<D extends DescMessage>(request: Frame, schema: D, init: MessageInitShape<D>): void {
    const body = toBinary(schema, create(schema, init));
    this.deliver(encodeFrame({ ...request, cmd: request.cmd | RESPONSE_BIT, reserve: 0 }, body));
  }

  push<D extends DescMessage>(cmd: number, schema: D, init: MessageInitShape<D>, sequenceid = 1): void {
    const body = toBinary(schema, create(schema, init));
    this.deliver(encodeFrame({ cmd, appcode: 1001, msgtype: 0, uid: 42n, sequenceid }, body));
  }
}

export function bodyOf<D extends DescMessage>(schema: D, frame: Frame): MessageShape<D> {
  return fromBinary(schema, frame.body);
}

/** A socket factory that keeps every socket it made. */
export function factory(): { sockets: FakeSocket[]; make: (url: string, protocol: string) => FakeSocket } {
  const sockets: FakeSocket[] = [];
  return {
    sockets,
    make: (url, protocol) => {
      const s = new FakeSocket(url, protocol);
      sockets.push(s);
      return s;
    },
  };
}
