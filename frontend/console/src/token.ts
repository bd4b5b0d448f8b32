// Tokens for the console's LOGIN (docs/protocol.md §5). On the demo apps the
// node hands them out itself: POST /console/demo-token {"appcode", "uid"} ->
// {"token", "expires_at"}; elsewhere (403) the agent pastes a token that the
// app server minted.
import { FatalError } from "@shared/client";

export interface DemoToken {
  token: string;
  expiresAt: number;
}

type Fetch = (input: string, init?: RequestInit) => Promise<Response>;

/** Where the node serves demo tokens (beside the page, which is built for /console/). */
export const DEMO_TOKEN_PATH = "/console/demo-token";

/** Why the node refused, from its JSON answer ({"error": ...} or {"reason": ...}) or its text. */
async function refusal(response: Response): Promise<string> {
  const text = (await response.text().catch(() => "")).slice(0, 300);
  try {
    const body: unknown = JSON.parse(text);
    if (body && typeof body === "object") {
      const o = body as Record<string, unknown>;
      for (const field of ["error", "reason", "detail", "message"]) {
        if (typeof o[field] === "string") {
          return o[field] as string;
        }
      }
    }
  } catch {
    // not JSON: the text itself
  }
  return text.trim();
}

/**
 * A demo token for (appcode, uid). FatalError when the node will not give one
 * (403: not the demo apps or not loopback; 404: no such endpoint; 400), a
 * plain Error when it may work later (network, 5xx).
 */
export async function fetchDemoToken(appcode: number, uid: bigint, fetchFn: Fetch = (i, r) => fetch(i, r)): Promise<DemoToken> {
  let response: Response;
  try {
    response = await fetchFn(DEMO_TOKEN_PATH, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ appcode, uid: uid.toString() }),
      credentials: "same-origin",
    });
  } catch (error) {
    throw new Error(`the node did not answer (${error instanceof Error ? error.message : String(error)})`);
  }
  if (response.status === 200) {
    const body = (await response.json()) as { token?: unknown; expires_at?: unknown };
    if (typeof body.token !== "string") {
      throw new FatalError("the demo-token answer has no token");
    }
    return { token: body.token, expiresAt: Number(body.expires_at) };
  }
  const why = await refusal(response);
  const text = `HTTP ${response.status}${why ? `: ${why}` : ""}`;
  if (response.status >= 400 && response.status < 500) {
    throw new FatalError(
      response.status === 403
        ? `this node does not hand out demo tokens (${text}); paste a token minted by your app server`
        : `no demo token (${text}); paste a token minted by your app server`,
    );
  }
  throw new Error(`no demo token (${text})`);
}

/** A token as the agent pasted it, or null when it cannot be one (§5: "<expires_at>:<64 hex>", ≤ 128 chars). */
export function checkPastedToken(token: string): string | null {
  const t = token.trim();
  return /^\d{1,12}:[0-9a-f]{64}$/.test(t) ? t : null;
}

/** A client_msg_id: a random UUID (crypto.randomUUID needs a secure context; getRandomValues does not). */
export function newClientMsgId(): string {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A uid as typed: 1 to 2^63 - 1 (docs/protocol.md §6.1), else null. */
export function parseUid(text: string): bigint | null {
  const t = text.trim();
  if (!/^[1-9]\d{0,18}$/.test(t)) {
    return null;
  }
  const uid = BigInt(t);
  return uid <= 2n ** 63n - 1n ? uid : null;
}

/** An appcode as typed: 1 to 2^32 - 1, else null. */
export function parseAppcode(text: string): number | null {
  const t = text.trim();
  if (!/^[1-9]\d{0,9}$/.test(t)) {
    return null;
  }
  const n = Number(t);
  return n <= 0xffffffff ? n : null;
}
