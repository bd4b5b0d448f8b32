// Requests to the API: the Bearer key, errors, the trace path.
import { describe, expect, it } from "vitest";
import { Api, ApiError, logidProblem, tracePath, Unreachable } from "../src/api";

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

describe("Api", () => {
  it("sends the key as a Bearer token, asks for no cache and no credentials", async () => {
    const seen: [string, RequestInit][] = [];
    const api = new Api("k-1", async (input, init) => {
      seen.push([input, init]);
      return json(200, { nodes: [] });
    });
    expect(await api.get("/v1/nodes")).toEqual({ nodes: [] });
    const [path, init] = seen[0];
    expect(path).toBe("/v1/nodes");
    expect((init.headers as Record<string, string>).Authorization).toBe("Bearer k-1");
    expect(init.cache).toBe("no-store");
    expect(init.credentials).toBe("omit");
  });

  it("turns a refusal into an ApiError with the node's reason", async () => {
    const api = new Api("k", async () => json(401, { error: "unknown API key" }));
    await expect(api.get("/v1/stats")).rejects.toEqual(new ApiError(401, "unknown API key"));
    const plain = new Api("k", async () => new Response("<html>", { status: 502, statusText: "Bad Gateway" }));
    const error = await plain.get("/v1/stats").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).status).toBe(502);
  });

  it("a node that does not answer is Unreachable", async () => {
    const api = new Api("k", async () => {
      throw new TypeError("Failed to fetch");
    });
    await expect(api.get("/v1/nodes")).rejects.toBeInstanceOf(Unreachable);
  });
});

describe("logids", () => {
  it("are percent-encoded, dots too", () => {
    expect(tracePath("order-7")).toBe("/v1/trace/order-7");
    expect(tracePath("a/b c?#%")).toBe("/v1/trace/a%2Fb%20c%3F%23%25");
    expect(tracePath("..")).toBe("/v1/trace/%2E%2E");
  });

  it("are 1 to 128 printable ASCII characters", () => {
    expect(logidProblem("order-7")).toBeNull();
    expect(logidProblem(" ~")).toBeNull();
    expect(logidProblem("x".repeat(128))).toBeNull();
    expect(logidProblem("")).not.toBeNull();
    expect(logidProblem("x".repeat(129))).not.toBeNull();
    expect(logidProblem("é")).not.toBeNull();
    expect(logidProblem("a\tb")).not.toBeNull();
  });
});
