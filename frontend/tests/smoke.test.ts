import { describe, expect, it } from "vitest";
import { create, toBinary, fromBinary } from "@bufbuild/protobuf";
import { LoginRequestSchema } from "@shared/gen/msgplatform_pb";

describe("generated protobuf code", () => {
  it("round-trips a LoginRequest", () => {
    const msg = create(LoginRequestSchema, { token: "t" });
    expect(fromBinary(LoginRequestSchema, toBinary(LoginRequestSchema, msg)).token).toBe("t");
  });
});
