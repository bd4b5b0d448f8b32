// The frame of docs/protocol.md §2: a 32-byte big-endian header
// (Python struct "!HBBIIQIII") and a protobuf body of `bodylength` bytes.
// Over WebSocket (§7.3) one binary message is exactly one frame, so decodeFrame
// takes one whole frame; there is no stream reassembly to do.

export const MAGIC = 0x58da;
export const VERSION = 1;
export const HEADER_SIZE = 32;
export const RESPONSE_BIT = 0x80;
const U32_MAX = 0xffffffff;
const U64_MAX = (1n << 64n) - 1n;

/** The header fields; `uid` is 64-bit, so a bigint. */
export interface Header {
  cmd: number;
  appcode: number;
  msgtype: number;
  uid: bigint;
  sequenceid: number;
  /** 1 unless a test writes another. */
  version?: number;
  /** 0 when sent, ignored when received. */
  reserve?: number;
}

export interface Frame extends Required<Header> {
  body: Uint8Array;
}

/** The bytes cannot be a frame (a WebSocket message the node would close with 1002). */
export class FrameError extends Error {
  override name = "FrameError";
}

function checkUint(name: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${name} must be an integer from 0 to ${max}, not ${value}`);
  }
}

/** One frame's bytes: the header of `header` and `body`. */
export function encodeFrame(header: Header, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  const version = header.version ?? VERSION;
  const reserve = header.reserve ?? 0;
  checkUint("cmd", header.cmd, 0xff);
  checkUint("version", version, 0xff);
  checkUint("appcode", header.appcode, U32_MAX);
  checkUint("msgtype", header.msgtype, U32_MAX);
  checkUint("sequenceid", header.sequenceid, U32_MAX);
  checkUint("reserve", reserve, U32_MAX);
  checkUint("bodylength", body.length, U32_MAX);
  if (typeof header.uid !== "bigint" || header.uid < 0n || header.uid > U64_MAX) {
    throw new RangeError(`uid must be a bigint from 0 to 2^64 - 1, not ${String(header.uid)}`);
  }
  const out = new Uint8Array(HEADER_SIZE + body.length);
  const view = new DataView(out.buffer);
  view.setUint16(0, MAGIC);
  view.setUint8(2, version);
  view.setUint8(3, header.cmd);
  view.setUint32(4, header.appcode);
  view.setUint32(8, header.msgtype);
  view.setBigUint64(12, header.uid);
  view.setUint32(20, header.sequenceid);
  view.setUint32(24, reserve);
  view.setUint32(28, body.length);
  out.set(body, HEADER_SIZE);
  return out;
}

/** The header alone (what a check of magic, version and size needs). */
export function decodeHeader(bytes: Uint8Array): Required<Header> & { bodylength: number } {
  if (bytes.length < HEADER_SIZE) {
    throw new FrameError(`a frame has at least ${HEADER_SIZE} bytes, not ${bytes.length}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  const magic = view.getUint16(0);
  if (magic !== MAGIC) {
    throw new FrameError(`bad magic 0x${magic.toString(16).padStart(4, "0")}`);
  }
  return {
    version: view.getUint8(2),
    cmd: view.getUint8(3),
    appcode: view.getUint32(4),
    msgtype: view.getUint32(8),
    uid: view.getBigUint64(12),
    sequenceid: view.getUint32(20),
    reserve: view.getUint32(24),
    bodylength: view.getUint32(28),
  };
}

/** Exactly one frame: `bytes` must be its header and its whole body, nothing more. */
export function decodeFrame(bytes: Uint8Array): Frame {
  const { bodylength, ...header } = decodeHeader(bytes);
  if (bytes.length !== HEADER_SIZE + bodylength) {
    throw new FrameError(
      `bodylength ${bodylength} does not match the ${bytes.length - HEADER_SIZE} bytes after the header`,
    );
  }
  return { ...header, body: bytes.slice(HEADER_SIZE) };
}

export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) {
    throw new Error("not an even number of hex digits");
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  }
  return out;
}
