import { describe, expect, it } from "vitest";
import { FrameError, HEADER_SIZE, decodeFrame, encodeFrame, fromHex, toHex } from "@shared/frame";

const header = { cmd: 5, appcode: 1001, msgtype: 10, uid: 2n ** 63n - 1n, sequenceid: 7 };

describe("frame codec", () => {
  it("round-trips a header and body, uid beyond 2^53 exactly", () => {
    const bytes = encodeFrame(header, new Uint8Array([1, 2, 3]));
    expect(bytes.length).toBe(HEADER_SIZE + 3);
    const frame = decodeFrame(bytes);
    expect(frame).toEqual({ ...header, version: 1, reserve: 0, body: new Uint8Array([1, 2, 3]) });
    expect(toHex(bytes.slice(12, 20))).toBe("7fffffffffffffff");
  });

  it("refuses values that do not fit their field", () => {
    expect(() => encodeFrame({ ...header, appcode: 2 ** 32 })).toThrow(RangeError);
    expect(() => encodeFrame({ ...header, sequenceid: -1 })).toThrow(RangeError);
    expect(() => encodeFrame({ ...header, msgtype: 1.5 })).toThrow(RangeError);
    expect(() => encodeFrame({ ...header, uid: 2n ** 64n })).toThrow(RangeError);
    expect(() => encodeFrame({ ...header, uid: -1n })).toThrow(RangeError);
  });

  it("refuses what is not exactly one frame", () => {
    const good = encodeFrame(header, new Uint8Array([9]));
    expect(() => decodeFrame(good.slice(0, 31))).toThrow(FrameError);
    expect(() => decodeFrame(good.slice(0, 32))).toThrow(/bodylength 1/);
    const more = new Uint8Array(good.length + 1);
    more.set(good);
    expect(() => decodeFrame(more)).toThrow(FrameError);
    const bad = good.slice();
    bad[1] = 0xdb;
    expect(() => decodeFrame(bad)).toThrow(/bad magic 0x58db/);
  });

  it("decodes a frame inside a larger buffer (a view with an offset)", () => {
    const bytes = encodeFrame(header, new Uint8Array([4, 5]));
    const big = new Uint8Array(bytes.length + 10);
    big.set(bytes, 10);
    expect(decodeFrame(big.subarray(10)).body).toEqual(new Uint8Array([4, 5]));
  });

  it("reads and writes hex", () => {
    expect(toHex(fromHex("58DA00ff"))).toBe("58da00ff");
    expect(() => fromHex("5")).toThrow();
    expect(() => fromHex("zz")).toThrow();
  });
});
