// A msgplatform client over a browser WebSocket (docs/protocol.md §7.3): one
// binary message per frame, subprotocol "msgplatform.v1", path /v1/ws.
//
// It logs in, keeps the connection alive (KEEPALIVE every heartbeat_s), matches
// responses to requests by sequenceid, ACKs every pushed message, drains PULL
// after a login that reports pending messages, pages HISTORY, sends C2C with a
// client_msg_id (resent with the same id when the answer is UNAVAILABLE,
// TIMEOUT or lost), and reconnects after a dropped connection with capped,
// jittered exponential back-off. Messages are delivered once per msgid.
// KICKOUT LOGIN_ELSEWHERE (and ADMIN, ABUSE) ends it: no reconnect.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { DescMessage, MessageInitShape } from "@bufbuild/protobuf";
import {
  AckSchema,
  C2CRequestSchema,
  HistoryRequestSchema,
  KickoutSchema,
  LoginRequestSchema,
  MessageSchema,
  PullRequestSchema,
} from "./gen/msgplatform_pb";
import type {
  HistoryResponse,
  Kickout,
  LoginResponse,
  Message,
  PullResponse,
  Result,
} from "./gen/msgplatform_pb";
import { RESPONSE_BIT, decodeFrame, encodeFrame } from "./frame";
import type { Frame } from "./frame";
import { Cmd, Code, KickReason, bodySchema, codeName, kickReasonName } from "./protocol";
import { DEFAULT_BACKOFF, DEFAULT_SEND_PAUSE, SeenSet, SendPause, backoffDelay } from "./backoff";
import type { BackoffOptions, SendPauseOptions } from "./backoff";

export const SUBPROTOCOL = "msgplatform.v1";
export const WS_PATH = "/v1/ws";
const WS_OPEN = 1;
const SEQ_MAX = 0xffffffff;

/** The part of a browser WebSocket the client uses (tests pass a fake). */
export interface SocketLike {
  binaryType: string;
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type SocketFactory = (url: string, protocol: string) => SocketLike;

export type Status = "idle" | "connecting" | "connected" | "reconnecting" | "kicked" | "failed" | "stopped";

export interface StatusEvent {
  status: Status;
  /** Why, for people: a result code name, a kickout reason, a close. */
  detail: string;
  /** While reconnecting: the delay before the next attempt, in ms. */
  retryInMs?: number;
}

/** A response whose `code` is not OK. */
export class ResponseError extends Error {
  override name = "ResponseError";
  constructor(readonly cmd: number, readonly code: number, readonly reason: string) {
    super(`${codeName(code)}${reason ? `: ${reason}` : ""}`);
  }
}

/** The connection closed before the answer came: the outcome is unknown. */
export class ConnectionLost extends Error {
  override name = "ConnectionLost";
}

/** No answer within the client's own timeout: the outcome is unknown. */
export class RequestTimeout extends Error {
  override name = "RequestTimeout";
}

/** The client stopped (logout, kickout, refused login): nothing more is sent. */
export class ClientStopped extends Error {
  override name = "ClientStopped";
}

/** Thrown by a token provider when retrying cannot help (e.g. HTTP 403). */
export class FatalError extends Error {
  override name = "FatalError";
}

/** Result codes after which the same request may be sent again (docs/protocol.md §4, §7). */
const RETRYABLE = new Set<number>([Code.UNAVAILABLE, Code.TIMEOUT]);
/** LOGIN answers that no retry will change: stop and tell the user. */
const LOGIN_FATAL = new Set<number>([Code.UNAUTHORIZED, Code.UNKNOWN_APPCODE, Code.BAD_REQUEST, Code.UID_MISMATCH]);
/** Kickouts after which the client must not come back on its own. */
const KICK_FINAL = new Set<number>([KickReason.LOGIN_ELSEWHERE, KickReason.ADMIN, KickReason.ABUSE]);

export interface ClientOptions {
  /** ws:// or wss:// URL of the gate's /v1/ws. */
  url: string;
  appcode: number;
  uid: bigint;
  /** Called before every LOGIN (a reconnect may need a fresh token). */
  token: () => Promise<string>;
  deviceId?: string;
  clientVersion?: string;
  socket?: SocketFactory;
  random?: () => number;
  backoff?: BackoffOptions;
  /** How long to wait for any answer before giving it up, in ms. */
  requestTimeoutMs?: number;
  /** Heartbeat used until a LoginResponse names one, in s. */
  defaultHeartbeatS?: number;
  /** How many attempts sendC2C makes before it gives up. */
  sendAttempts?: number;
  /** The pause after a C2C answered RATE_LIMITED ({@link SendPause}); false: none. */
  sendPause?: SendPauseOptions | false;
  /** A monotonic clock in ms, for that pause (tests pass a fake one). */
  now?: () => number;
}

export interface SendC2C {
  toUid: bigint;
  toAppcode: number;
  msgtype: number;
  content: Uint8Array;
  /** Fresh per message; the same on a resend (docs/protocol.md §6.3). */
  clientMsgId: string;
  logid?: string;
}

type Listener<T> = (value: T) => void;

interface Pending {
  cmd: number;
  resolve: (body: unknown) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export type MessageSource = "push" | "pull";

export class MsgClient {
  private socket: SocketLike | null = null;
  private status: Status = "idle";
  private seq = 0;
  private readonly pending = new Map<number, Pending>();
  private readonly seen = new SeenSet();
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private keepaliveTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatMs: number;
  private loggedIn = false;
  private draining = false;
  private drainAgain = false;
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private readonly statusListeners = new Set<Listener<StatusEvent>>();
  private readonly messageListeners = new Set<(m: Message, source: MessageSource) => void>();
  private readonly loginListeners = new Set<Listener<LoginResponse>>();
  private readonly kickListeners = new Set<Listener<Kickout>>();
  private readonly random: () => number;
  private readonly backoff: BackoffOptions;
  private readonly requestTimeoutMs: number;
  private readonly sendAttempts: number;
  private readonly makeSocket: SocketFactory;
  /** The pause after RATE_LIMITED; null when the options turned it off. */
  readonly sendPause: SendPause | null;

  constructor(private readonly options: ClientOptions) {
    this.random = options.random ?? Math.random;
    this.backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 15_000;
    this.sendAttempts = options.sendAttempts ?? 8;
    this.sendPause = options.sendPause === false ? null
      : new SendPause(options.sendPause ?? DEFAULT_SEND_PAUSE, this.random, options.now);
    this.heartbeatMs = (options.defaultHeartbeatS ?? 60) * 1000;
    this.makeSocket = options.socket ?? ((url, protocol) => new WebSocket(url, protocol) as unknown as SocketLike);
  }

  get appcode(): number {
    return this.options.appcode;
  }

  get uid(): bigint {
    return this.options.uid;
  }

  get currentStatus(): Status {
    return this.status;
  }

  onStatus(listener: Listener<StatusEvent>): () => void {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  /** Each msgid once, whether it came as a push or from a PULL. */
  onMessage(listener: (m: Message, source: MessageSource) => void): () => void {
    this.messageListeners.add(listener);
    return () => this.messageListeners.delete(listener);
  }

  onLogin(listener: Listener<LoginResponse>): () => void {
    this.loginListeners.add(listener);
    return () => this.loginListeners.delete(listener);
  }

  onKickout(listener: Listener<Kickout>): () => void {
    this.kickListeners.add(listener);
    return () => this.kickListeners.delete(listener);
  }

  /** Connect and log in; reconnects until stop(), a final kickout or a refused login. */
  start(): void {
    if (this.status !== "idle") {
      throw new Error(`start() on a client that is ${this.status}`);
    }
    void this.connect();
  }

  /** LOGOUT when logged in, close, and never reconnect. */
  stop(): void {
    if (this.socket && this.loggedIn) {
      try {
        this.sendFrame(Cmd.LOGOUT, 0, new Uint8Array(0));
      } catch {
        // not connected after all: closing is all there is to do
      }
    }
    this.finish("stopped", "logged out");
  }

  /** Resolves once logged in; rejects if the client stops first. */
  whenConnected(): Promise<void> {
    if (this.status === "connected") {
      return Promise.resolve();
    }
    if (this.isFinal()) {
      return Promise.reject(new ClientStopped(this.status));
    }
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** One HISTORY page (docs/protocol.md §6.3): newest first, msgid < beforeMsgid (0n: from the newest). */
  async history(peerUid = 0n, beforeMsgid = 0n, limit = 50): Promise<HistoryResponse> {
    const body = await this.call(Cmd.HISTORY, HistoryRequestSchema, { peerUid, beforeMsgid, limit });
    return checked(Cmd.HISTORY, body as HistoryResponse);
  }

  async pull(afterMsgid = 0n, limit = 100): Promise<PullResponse> {
    const body = await this.call(Cmd.PULL, PullRequestSchema, { afterMsgid, limit });
    return checked(Cmd.PULL, body as PullResponse);
  }

  async ack(msgids: bigint[]): Promise<Result> {
    const body = await this.call(Cmd.ACK, AckSchema, { msgids });
    return checked(Cmd.ACK, body as Result);
  }

  /**
   * Send a C2C and resolve with its OK Result (msgid, logid). An answer of
   * UNAVAILABLE or TIMEOUT, a lost connection or no answer sends it again, with
   * the same client_msg_id, once connected again (after a back-off); any other
   * code rejects with ResponseError.
   *
   * RATE_LIMITED starts a pause ({@link SendPause}): a C2C asked for during it
   * rejects at once with ResponseError(RATE_LIMITED, "held back: the client
   * pauses its sends ..."), unsent. A resend of one already tried still goes,
   * since the first try may have been stored.
   */
  async sendC2C(message: SendC2C): Promise<Result> {
    const pause = this.sendPause;
    if (pause?.paused()) {
      const left = (pause.remainingMs() / 1000).toFixed(2);
      throw new ResponseError(Cmd.C2C, Code.RATE_LIMITED, `held back: the client pauses its sends (${left} s left)`);
    }
    let lastError: Error = new RequestTimeout("not sent");
    for (let attempt = 0; attempt < this.sendAttempts; attempt++) {
      if (attempt > 0) {
        await sleep(backoffDelay(attempt - 1, this.backoff, this.random));
      }
      await this.whenConnected();
      const sentAt = pause?.clock() ?? 0;
      try {
        const body = (await this.call(
          Cmd.C2C,
          C2CRequestSchema,
          {
            toUid: message.toUid,
            toAppcode: message.toAppcode,
            content: message.content,
            clientMsgId: message.clientMsgId,
            logid: message.logid ?? "",
          },
          message.msgtype,
        )) as Result;
        if (body.code === Code.RATE_LIMITED) {
          pause?.refused(sentAt);
        } else if (body.code === Code.OK) {
          pause?.accepted(sentAt);
        }
        return checked(Cmd.C2C, body);
      } catch (error) {
        if (!(error instanceof Error) || !isRetryable(error)) {
          throw error;
        }
        lastError = error;
      }
    }
    throw lastError;
  }

  /**
   * PULL from 0 until has_more is false (docs/protocol.md §6.3), delivering new
   * msgids and ACKing each page. A drain asked for while one runs runs again after it.
   */
  async drain(): Promise<void> {
    if (this.draining) {
      this.drainAgain = true;
      return;
    }
    this.draining = true;
    try {
      do {
        this.drainAgain = false;
        let after = 0n;
        for (;;) {
          const page = await this.pull(after, 100);
          const ids = page.messages.map((m) => m.msgid);
          for (const m of page.messages) {
            this.deliver(m, "pull");
          }
          if (ids.length > 0) {
            await this.ack(ids);
            after = ids[ids.length - 1];
          }
          if (!page.hasMore || ids.length === 0) {
            break;
          }
        }
      } while (this.drainAgain);
    } finally {
      this.draining = false;
    }
  }

  // --- connection life ---------------------------------------------------

  private isFinal(): boolean {
    return this.status === "kicked" || this.status === "failed" || this.status === "stopped";
  }

  private setStatus(status: Status, detail: string, retryInMs?: number): void {
    this.status = status;
    const event: StatusEvent = retryInMs === undefined ? { status, detail } : { status, detail, retryInMs };
    for (const listener of this.statusListeners) {
      listener(event);
    }
    if (status === "connected") {
      const waiters = this.waiters.splice(0);
      waiters.forEach((w) => w.resolve());
    } else if (this.isFinal()) {
      const waiters = this.waiters.splice(0);
      waiters.forEach((w) => w.reject(new ClientStopped(`${status}: ${detail}`)));
    }
  }

  private async connect(): Promise<void> {
    this.reconnectTimer = null;
    this.setStatus(this.attempt === 0 ? "connecting" : "reconnecting", "connecting");
    let token: string;
    try {
      token = await this.options.token();
    } catch (error) {
      if (error instanceof FatalError) {
        this.finish("failed", error.message);
      } else {
        this.scheduleReconnect(`no token: ${error instanceof Error ? error.message : String(error)}`);
      }
      return;
    }
    if (this.isFinal()) {
      return;
    }
    let socket: SocketLike;
    try {
      socket = this.makeSocket(this.options.url, SUBPROTOCOL);
    } catch (error) {
      this.scheduleReconnect(error instanceof Error ? error.message : String(error));
      return;
    }
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    // A connection that never opens (a black hole) is given up like an unanswered request.
    const opening = setTimeout(() => this.drop(socket, "the connection did not open"), this.requestTimeoutMs);
    socket.onopen = () => {
      clearTimeout(opening);
      void this.login(socket, token);
    };
    socket.onmessage = (ev) => this.receive(socket, ev.data);
    socket.onerror = () => undefined; // a close event follows
    socket.onclose = (ev) => {
      clearTimeout(opening);
      this.closed(socket, `closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`);
    };
  }

  private async login(socket: SocketLike, token: string): Promise<void> {
    let response: LoginResponse;
    try {
      response = (await this.call(Cmd.LOGIN, LoginRequestSchema, {
        token,
        deviceId: this.options.deviceId ?? "",
        clientVersion: this.options.clientVersion ?? "",
      })) as LoginResponse;
    } catch (error) {
      if (this.socket === socket && !(error instanceof ConnectionLost)) {
        this.drop(socket, error instanceof Error ? error.message : String(error));
      }
      return;
    }
    if (this.socket !== socket) {
      return;
    }
    if (response.code !== Code.OK) {
      const why = `login refused: ${new ResponseError(Cmd.LOGIN, response.code, response.reason).message}`;
      if (LOGIN_FATAL.has(response.code)) {
        this.finish("failed", why);
      } else {
        this.drop(socket, why);
      }
      return;
    }
    this.loggedIn = true;
    this.attempt = 0;
    if (response.heartbeatS > 0) {
      this.heartbeatMs = response.heartbeatS * 1000;
    }
    this.armKeepalive();
    this.setStatus("connected", `session ${response.sessionId}`);
    for (const listener of this.loginListeners) {
      listener(response);
    }
    if (response.offlineCount > 0) {
      this.drain().catch(() => undefined); // a drop ends it; the next login drains again
    }
  }

  /** Close this socket on our side and reconnect after a back-off. */
  private drop(socket: SocketLike, why: string): void {
    socket.close(1000, "reconnecting");
    this.closed(socket, why);
  }

  private closed(socket: SocketLike, why: string): void {
    if (this.socket !== socket) {
      return;
    }
    this.detach(socket);
    if (!this.isFinal()) {
      this.scheduleReconnect(why);
    }
  }

  private detach(socket: SocketLike): void {
    socket.onopen = socket.onmessage = socket.onerror = socket.onclose = null;
    this.socket = null;
    this.loggedIn = false;
    this.clearKeepalive();
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(new ConnectionLost("the connection closed before the answer"));
    }
  }

  private scheduleReconnect(why: string): void {
    const delay = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    this.setStatus("reconnecting", why, delay);
    this.reconnectTimer = setTimeout(() => void this.connect(), delay);
  }

  private finish(status: "kicked" | "failed" | "stopped", why: string): void {
    if (this.reconnectTimer !== null) {
      clearTimeout(this.reconnectTimer);
      this.reconnectTimer = null;
    }
    const socket = this.socket;
    if (socket) {
      this.detach(socket);
      socket.close(1000, status);
    }
    this.setStatus(status, why);
  }

  // --- frames ------------------------------------------------------------

  private nextSeq(): number {
    do {
      this.seq = this.seq >= SEQ_MAX ? 1 : this.seq + 1;
    } while (this.pending.has(this.seq));
    return this.seq;
  }

  private sendFrame(cmd: number, msgtype: number, body: Uint8Array, sequenceid = this.nextSeq()): number {
    const socket = this.socket;
    if (!socket || socket.readyState !== WS_OPEN) {
      throw new ConnectionLost("not connected");
    }
    socket.send(encodeFrame({ cmd, appcode: this.options.appcode, msgtype, uid: this.options.uid, sequenceid }, body));
    this.armKeepalive();
    return sequenceid;
  }

  private call<D extends DescMessage>(cmd: number, schema: D | null, init: MessageInitShape<D> | null,
    msgtype = 0): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (cmd !== Cmd.LOGIN && cmd !== Cmd.KEEPALIVE && !this.loggedIn) {
        reject(new ConnectionLost("not logged in"));
        return;
      }
      const body = schema && init ? toBinary(schema, create(schema, init)) : new Uint8Array(0);
      const seq = this.nextSeq();
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new RequestTimeout(`no answer to cmd ${cmd} within ${this.requestTimeoutMs} ms`));
      }, this.requestTimeoutMs);
      this.pending.set(seq, { cmd, resolve, reject, timer });
      try {
        this.sendFrame(cmd, msgtype, body, seq);
      } catch (error) {
        clearTimeout(timer);
        this.pending.delete(seq);
        reject(error instanceof Error ? error : new Error(String(error)));
      }
    });
  }

  private receive(socket: SocketLike, data: unknown): void {
    if (this.socket !== socket) {
      return;
    }
    let frame: Frame;
    try {
      if (!(data instanceof ArrayBuffer)) {
        throw new Error("a text message");
      }
      frame = decodeFrame(new Uint8Array(data));
    } catch (error) {
      this.drop(socket, `bad frame from the server: ${error instanceof Error ? error.message : String(error)}`);
      return;
    }
    if (frame.cmd & RESPONSE_BIT) {
      this.response(frame);
    } else {
      this.push(socket, frame);
    }
  }

  private response(frame: Frame): void {
    const p = this.pending.get(frame.sequenceid);
    if (!p || (p.cmd | RESPONSE_BIT) !== frame.cmd) {
      return; // an answer to a request we gave up on
    }
    this.pending.delete(frame.sequenceid);
    clearTimeout(p.timer);
    const schema = bodySchema(frame.cmd, "response");
    try {
      p.resolve(schema ? fromBinary(schema, frame.body) : null);
    } catch (error) {
      p.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }

  private push(socket: SocketLike, frame: Frame): void {
    if (frame.cmd === Cmd.KICKOUT) {
      const kick = fromBinary(KickoutSchema, frame.body);
      for (const listener of this.kickListeners) {
        listener(kick);
      }
      const why = `kicked out: ${kickReasonName(kick.reasonCode)}${kick.reason ? ` (${kick.reason})` : ""}`;
      if (KICK_FINAL.has(kick.reasonCode)) {
        this.finish("kicked", why);
      } else {
        this.drop(socket, why);
      }
      return;
    }
    if (frame.cmd !== Cmd.C2C && frame.cmd !== Cmd.S2C) {
      return;
    }
    let message: Message;
    try {
      message = fromBinary(MessageSchema, frame.body);
    } catch {
      return; // not ACKed: it stays pending and comes again by PULL
    }
    this.deliver(message, "push");
    this.ack([message.msgid]).catch(() => undefined); // un-ACKed stays pending: a later drain has it
  }

  private deliver(message: Message, source: MessageSource): void {
    if (!this.seen.add(message.msgid)) {
      return;
    }
    for (const listener of this.messageListeners) {
      listener(message, source);
    }
  }

  // --- keepalive ---------------------------------------------------------

  /** KEEPALIVE after heartbeat_s without a frame sent; no answer in time drops the connection. */
  private armKeepalive(): void {
    this.clearKeepalive();
    if (!this.loggedIn) {
      return;
    }
    const socket = this.socket;
    this.keepaliveTimer = setTimeout(() => {
      this.keepaliveTimer = null;
      if (!socket || this.socket !== socket) {
        return;
      }
      this.call(Cmd.KEEPALIVE, null, null).catch((error: unknown) => {
        if (error instanceof RequestTimeout && this.socket === socket) {
          this.drop(socket, "no answer to KEEPALIVE");
        }
      });
    }, this.heartbeatMs);
  }

  private clearKeepalive(): void {
    if (this.keepaliveTimer !== null) {
      clearTimeout(this.keepaliveTimer);
      this.keepaliveTimer = null;
    }
  }
}

function checked<T extends { code: number; reason: string }>(cmd: number, body: T): T {
  if (body.code !== Code.OK) {
    throw new ResponseError(cmd, body.code, body.reason);
  }
  return body;
}

function isRetryable(error: Error): boolean {
  if (error instanceof ResponseError) {
    return RETRYABLE.has(error.code);
  }
  return error instanceof ConnectionLost || error instanceof RequestTimeout;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** ws(s)://host/v1/ws of the page's own origin. */
export function sameOriginUrl(location: { protocol: string; host: string }): string {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${WS_PATH}`;
}
