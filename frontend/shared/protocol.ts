// Commands, result codes and kickout reasons of protocol version 1
// (docs/protocol.md §3, §4), and which protobuf body each frame carries.
import type { DescMessage } from "@bufbuild/protobuf";
import {
  AckSchema,
  C2CRequestSchema,
  C2SRequestSchema,
  HistoryRequestSchema,
  HistoryResponseSchema,
  KickoutSchema,
  LoginRequestSchema,
  LoginResponseSchema,
  MessageSchema,
  PullRequestSchema,
  PullResponseSchema,
  ResultSchema,
} from "./gen/msgplatform_pb";
import { RESPONSE_BIT } from "./frame";

export const Cmd = {
  LOGIN: 0x01,
  LOGOUT: 0x02,
  C2S: 0x03,
  S2C: 0x04,
  C2C: 0x05,
  KEEPALIVE: 0x06,
  KICKOUT: 0x07,
  ACK: 0x08,
  PULL: 0x09,
  HISTORY: 0x0a,
} as const;
export type CmdName = keyof typeof Cmd;

export const Code = {
  OK: 0,
  BAD_REQUEST: 1,
  UNAUTHORIZED: 2,
  NOT_LOGGED_IN: 3,
  UID_MISMATCH: 4,
  TOO_LARGE: 5,
  RATE_LIMITED: 6,
  UNKNOWN_CMD: 7,
  UNSUPPORTED_VERSION: 8,
  UNKNOWN_APPCODE: 9,
  NO_ROUTE: 10,
  UNAVAILABLE: 11,
  INTERNAL: 12,
  /** Planned (docs/protocol.md §7): treated as retryable already. */
  TIMEOUT: 13,
} as const;

export const KickReason = {
  LOGIN_ELSEWHERE: 1,
  ADMIN: 2,
  SHUTDOWN: 3,
  ABUSE: 4,
} as const;

/** The name of a result code, or "code N" for one this client does not know. */
export function codeName(code: number): string {
  const entry = Object.entries(Code).find(([, value]) => value === code);
  return entry ? entry[0] : `code ${code}`;
}

export function kickReasonName(code: number): string {
  const entry = Object.entries(KickReason).find(([, value]) => value === code);
  return entry ? entry[0] : `reason ${code}`;
}

export type Direction = "request" | "response" | "push";

const REQUEST: Record<number, DescMessage | null> = {
  [Cmd.LOGIN]: LoginRequestSchema,
  [Cmd.LOGOUT]: null,
  [Cmd.C2S]: C2SRequestSchema,
  [Cmd.C2C]: C2CRequestSchema,
  [Cmd.KEEPALIVE]: null,
  [Cmd.ACK]: AckSchema,
  [Cmd.PULL]: PullRequestSchema,
  [Cmd.HISTORY]: HistoryRequestSchema,
};
const RESPONSE: Record<number, DescMessage> = {
  [Cmd.LOGIN]: LoginResponseSchema,
  [Cmd.PULL]: PullResponseSchema,
  [Cmd.HISTORY]: HistoryResponseSchema,
};
const PUSH: Record<number, DescMessage> = {
  [Cmd.S2C]: MessageSchema,
  [Cmd.C2C]: MessageSchema,
  [Cmd.KICKOUT]: KickoutSchema,
};

/**
 * The body type of a frame (docs/protocol.md §3): `null` for a request with no
 * body (LOGOUT, KEEPALIVE), `undefined` for a frame that has none in the table.
 * A response's `cmd` may be given with or without the 0x80 bit; every response
 * not LOGIN, PULL or HISTORY is a Result (UNKNOWN_CMD answers included).
 */
export function bodySchema(cmd: number, direction: Direction): DescMessage | null | undefined {
  const base = cmd & ~RESPONSE_BIT;
  if (direction === "request") {
    return REQUEST[base];
  }
  if (direction === "response") {
    return RESPONSE[base] ?? ResultSchema;
  }
  return PUSH[base];
}
