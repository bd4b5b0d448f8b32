// GET requests to the node's HTTP API (same origin) with the API key as a
// Bearer token. A refusal is an ApiError with the status and the node's reason.

export type Fetch = (input: string, init: RequestInit) => Promise<Response>;

export class ApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = "ApiError";
  }
}

/** The node could not be reached (no HTTP answer at all). */
export class Unreachable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Unreachable";
  }
}

export class Api {
  constructor(private readonly key: string, private readonly fetchFn: Fetch) {}

  async get<T>(path: string): Promise<T> {
    let response: Response;
    try {
      response = await this.fetchFn(path, {
        method: "GET",
        headers: { Authorization: `Bearer ${this.key}`, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch (e) {
      throw new Unreachable(e instanceof Error ? e.message : String(e));
    }
    let body: unknown = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const reason = body !== null && typeof body === "object" && "error" in body
        ? String((body as { error: unknown }).error) : response.statusText;
      throw new ApiError(response.status, reason || `HTTP ${response.status}`);
    }
    return body as T;
  }
}

/** The path of GET /v1/trace/{logid}: the logid percent-encoded, dots too
 * (a browser would read "." and ".." as path steps). */
export function tracePath(logid: string): string {
  return `/v1/trace/${encodeURIComponent(logid).replace(/\./g, "%2E")}`;
}

/** Why ``logid`` cannot be looked up, or null: 1 to 128 printable ASCII characters. */
export function logidProblem(logid: string): string | null {
  if (logid.length === 0) {
    return "Enter a logid.";
  }
  if (logid.length > 128) {
    return "A logid is at most 128 characters.";
  }
  if (!/^[\x20-\x7e]+$/.test(logid)) {
    return "A logid is printable ASCII only.";
  }
  return null;
}
