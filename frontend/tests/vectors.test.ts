// The browser codec against the shared vectors of proto/vectors.json (the Python
// codec is checked against the same file by tests/protocol/test_vectors.py).
import { describe, expect, it } from "vitest";
import { createRegistry, fromBinary, fromJson, toBinary, toJson } from "@bufbuild/protobuf";
import type { DescMessage, JsonObject } from "@bufbuild/protobuf";
import { file_msgplatform } from "@shared/gen/msgplatform_pb";
import { decodeFrame, encodeFrame, fromHex, toHex } from "@shared/frame";
import { bodySchema } from "@shared/protocol";
import type { Direction } from "@shared/protocol";
import vectorsJson from "../../proto/vectors.json";

interface Vector {
  name: string;
  direction: Direction;
  header: { cmd: number; appcode: number; msgtype: number; uid: string; sequenceid: number; version: number; reserve: number };
  body_type: string | null;
  body: JsonObject;
  hex: string;
}

const vectors = vectorsJson as Vector[];
const registry = createRegistry(file_msgplatform);

function schemaOf(v: Vector): DescMessage | null {
  if (v.body_type === null) {
    return null;
  }
  const schema = registry.getMessage(`daojia.msg.v1.${v.body_type}`);
  if (!schema) {
    throw new Error(`no message type ${v.body_type}`);
  }
  return schema;
}

describe("proto/vectors.json", () => {
  it("has vectors", () => {
    expect(vectors.length).toBeGreaterThan(20);
  });

  for (const v of vectors) {
    describe(v.name, () => {
      it("encodes to its bytes", () => {
        const schema = schemaOf(v);
        const body = schema ? toBinary(schema, fromJson(schema, v.body)) : new Uint8Array(0);
        const frame = encodeFrame({ ...v.header, uid: BigInt(v.header.uid) }, body);
        expect(toHex(frame)).toBe(v.hex);
      });

      it("decodes to its fields", () => {
        const frame = decodeFrame(fromHex(v.hex));
        expect({ ...frame, uid: frame.uid.toString(), body: undefined }).toEqual({
          ...v.header,
          body: undefined,
        });
        const schema = schemaOf(v);
        if (schema === null) {
          expect(frame.body.length).toBe(0);
          expect(v.body).toEqual({});
        } else {
          const json = toJson(schema, fromBinary(schema, frame.body), { useProtoFieldName: true });
          expect(json).toEqual(v.body);
        }
      });

      it("carries the body its command and direction call for", () => {
        const schema = bodySchema(v.header.cmd, v.direction);
        expect(schema === null ? null : schema?.name).toBe(v.body_type);
      });
    });
  }
});
