// The WebSocket client with a fake socket and fake timers: login, keepalive,
// ACKs, de-duplication, reconnect with back-off, PULL drain, C2C resend, kickout.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  AckSchema,
  C2CRequestSchema,
  HistoryRequestSchema,
  HistoryResponseSchema,
  KickoutSchema,
  LoginRequestSchema,
  LoginResponseSchema,
  MessageSchema,
  PullRequestSchema,
  PullResponseSchema,
  ResultSchema,
} from "@shared/gen/msgplatform_pb";
import type { Message } from "@shared/gen/msgplatform_pb";
import { Cmd, Code, KickReason } from "@shared/protocol";
import { FatalError, MsgClient, ResponseError, sameOriginUrl } from "@shared/client";
import type { StatusEvent } from "@shared/client";
import { SeenSet, SendPause, backoffDelay } from "@shared/backoff";
import { FakeSocket, bodyOf, factory } from "./fakesocket";

const tick = () => vi.advanceTimersByTimeAsync(0);

function setup(options: { token?: () => Promise<string>; sendPause?: false } = {}) {
  const f = factory();
  const tokens: string[] = [];
  let n = 0;
  const client = new MsgClient({
    url: "ws://node/v1/ws",
    appcode: 1001,
    uid: 2n ** 53n + 1n,
    token: options.token ?? (async () => {
      n += 1;
      tokens.push(`token-${n}`);
      return `token-${n}`;
    }),
    socket: f.make,
    random: () => 0.5,
    backoff: { baseMs: 1000, capMs: 8000 },
    requestTimeoutMs: 5000,
    now: () => Date.now(), // faked with the timers
    ...(options.sendPause === undefined ? {} : { sendPause: options.sendPause }),
  });
  const statuses: StatusEvent[] = [];
  const messages: [Message, string][] = [];
  client.onStatus((s) => statuses.push(s));
  client.onMessage((m, source) => messages.push([m, source]));
  return { client, sockets: f.sockets, statuses, messages, tokens };
}

/** Open the newest socket and answer its LOGIN with `init`. */
async function login(sockets: FakeSocket[], init: { offlineCount?: number; heartbeatS?: number; code?: number } = {}) {
  await tick();
  const socket = sockets[sockets.length - 1];
  socket.open();
  socket.reply(socket.last(Cmd.LOGIN), LoginResponseSchema, {
    code: init.code ?? Code.OK,
    sessionId: "s",
    heartbeatS: init.heartbeatS ?? 60,
    offlineCount: init.offlineCount ?? 0,
  });
  await tick();
  return socket;
}

function msg(msgid: bigint, text = "hi"): MessageInitShape<typeof MessageSchema> {
  return { msgid, fromUid: 7n, fromAppcode: 1002, toUid: 2n ** 53n + 1n, toAppcode: 1001, msgtype: 1, content: new TextEncoder().encode(text) };
}

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

describe("backoff and de-duplication", () => {
  it("grows exponentially with jitter inside [ceiling/2, ceiling], capped", () => {
    const opts = { baseMs: 500, capMs: 30_000 };
    expect(backoffDelay(0, opts, () => 0)).toBe(250);
    expect(backoffDelay(0, opts, () => 1)).toBe(500);
    expect(backoffDelay(3, opts, () => 0.5)).toBe(3000);
    expect(backoffDelay(10, opts, () => 1)).toBe(30_000);
    expect(backoffDelay(1000, opts, () => 0)).toBe(15_000);
  });

  it("remembers msgids, the newest `limit` of them", () => {
    const seen = new SeenSet(2);
    expect(seen.add(1n)).toBe(true);
    expect(seen.add(1n)).toBe(false);
    seen.add(2n);
    seen.add(3n);
    expect(seen.has(1n)).toBe(false);
    expect(seen.has(3n)).toBe(true);
    expect(seen.size).toBe(2);
  });
});

describe("the pause after RATE_LIMITED", () => {
  function pause(random = () => 0.5) {
    let now = 1000;
    const p = new SendPause({ baseMs: 50, capMs: 1000 }, random, () => now);
    return { p, at: (ms: number) => { now = ms; } };
  }

  it("doubles with each refusal in a row up to the cap, jittered within [ceiling/2, ceiling]", () => {
    const { p } = pause(() => 1);
    expect([1, 2, 3, 4, 5, 6, 7].map(() => p.refused(p.clock()))).toEqual([50, 100, 200, 400, 800, 1000, 1000]);
    expect(pause(() => 0).p.refused(1000)).toBe(25);
  });

  it("is over after its length, and an accepted send starts the row again", () => {
    const { p, at } = pause();
    expect(p.paused()).toBe(false);
    p.refused(1000); // 37.5 ms
    expect(p.paused()).toBe(true);
    expect(p.remainingMs()).toBe(37.5);
    at(1037.5);
    expect(p.paused()).toBe(false);
    expect(p.refused(1037.5)).toBe(75);
    at(1200);
    p.accepted(1200);
    expect(p.refused(1200)).toBe(37.5);
  });

  it("does not grow for frames sent before it began, nor end the row for their OK", () => {
    const { p, at } = pause();
    at(1010);
    expect(p.refused(1010)).toBe(37.5);
    expect(p.refused(1000)).toBe(0); // in flight when the pause began
    p.accepted(1005);
    expect(p.refusals).toBe(1);
    expect(p.remainingMs()).toBe(37.5);
  });

  it("refuses bounds that make no sense", () => {
    expect(() => new SendPause({ baseMs: 0, capMs: 10 })).toThrow(RangeError);
    expect(() => new SendPause({ baseMs: 20, capMs: 10 })).toThrow(RangeError);
  });
});

describe("MsgClient", () => {
  it("logs in over the msgplatform.v1 subprotocol with the header's uid and appcode", async () => {
    const { client, sockets, statuses } = setup();
    client.start();
    const socket = await login(sockets);
    expect(socket.url).toBe("ws://node/v1/ws");
    expect(socket.protocol).toBe("msgplatform.v1");
    expect(socket.binaryType).toBe("arraybuffer");
    const req = socket.last(Cmd.LOGIN);
    expect([req.uid, req.appcode, req.sequenceid]).toEqual([2n ** 53n + 1n, 1001, 1]);
    expect(bodyOf(LoginRequestSchema, req).token).toBe("token-1");
    expect(statuses.map((s) => s.status)).toEqual(["connecting", "connected"]);
    expect(client.currentStatus).toBe("connected");
  });

  it("sends KEEPALIVE after heartbeat_s of silence and reconnects when it is not answered", async () => {
    const { client, sockets } = setup();
    client.start();
    const socket = await login(sockets, { heartbeatS: 30 });
    await vi.advanceTimersByTimeAsync(29_999);
    expect(socket.sentOf(Cmd.KEEPALIVE)).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.sentOf(Cmd.KEEPALIVE)).toHaveLength(1);
    socket.reply(socket.last(Cmd.KEEPALIVE), ResultSchema, { code: 0 });
    await vi.advanceTimersByTimeAsync(30_000);
    expect(socket.sentOf(Cmd.KEEPALIVE)).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(5000); // no answer
    expect(socket.closedByClient).not.toBeNull();
    expect(client.currentStatus).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(750);
    expect(sockets).toHaveLength(2);
  });

  it("delivers each pushed msgid once and ACKs every push", async () => {
    const { client, sockets, messages } = setup();
    client.start();
    const socket = await login(sockets);
    socket.push(Cmd.C2C, MessageSchema, msg(2n ** 62n + 1n, "你好"), 1);
    socket.push(Cmd.C2C, MessageSchema, msg(2n ** 62n + 1n, "你好"), 2); // a re-push
    socket.push(Cmd.S2C, MessageSchema, { ...msg(5n), fromUid: 0n, fromAppcode: 0 }, 3);
    expect(messages.map(([m, s]) => [m.msgid, s, new TextDecoder().decode(m.content)])).toEqual([
      [2n ** 62n + 1n, "push", "你好"],
      [5n, "push", "hi"],
    ]);
    expect(socket.sentOf(Cmd.ACK).map((f) => bodyOf(AckSchema, f).msgids)).toEqual([[2n ** 62n + 1n], [2n ** 62n + 1n], [5n]]);
  });

  it("matches answers to requests by sequenceid, in any order", async () => {
    const { client, sockets } = setup();
    client.start();
    const socket = await login(sockets);
    const first = client.history(7n, 0n, 10);
    const second = client.history(8n, 100n, 5);
    const [a, b] = socket.sentOf(Cmd.HISTORY);
    expect(bodyOf(HistoryRequestSchema, b)).toMatchObject({ peerUid: 8n, beforeMsgid: 100n, limit: 5 });
    socket.reply(b, HistoryResponseSchema, { messages: [msg(2n)], hasMore: true });
    socket.reply(a, HistoryResponseSchema, { messages: [msg(1n)] });
    expect((await first).messages[0].msgid).toBe(1n);
    expect((await second).hasMore).toBe(true);
  });

  it("rejects an error answer with its code", async () => {
    const { client, sockets } = setup();
    client.start();
    const socket = await login(sockets);
    const page = client.history();
    socket.reply(socket.last(Cmd.HISTORY), HistoryResponseSchema, { code: Code.UNAVAILABLE, reason: "store down" });
    await expect(page).rejects.toThrow("UNAVAILABLE: store down");
  });

  it("reconnects after a drop with growing back-off, logs in with a fresh token and drains PULL from 0", async () => {
    const { client, sockets, statuses, messages, tokens } = setup();
    client.start();
    let socket = await login(sockets);
    socket.push(Cmd.C2C, MessageSchema, msg(10n));
    socket.drop();
    expect(statuses.at(-1)).toMatchObject({ status: "reconnecting", retryInMs: 750 });
    await vi.advanceTimersByTimeAsync(749);
    expect(sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(sockets).toHaveLength(2);
    sockets[1].drop(); // refused before it opened
    expect(statuses.at(-1)).toMatchObject({ status: "reconnecting", retryInMs: 1500 });
    await vi.advanceTimersByTimeAsync(1500);
    socket = await login(sockets, { offlineCount: 3 });
    expect(tokens).toEqual(["token-1", "token-2", "token-3"]);
    expect(client.currentStatus).toBe("connected");
    // drain: two pages, the first with a msgid already pushed
    let pull = socket.last(Cmd.PULL);
    expect(bodyOf(PullRequestSchema, pull).afterMsgid).toBe(0n);
    socket.reply(pull, PullResponseSchema, { messages: [msg(10n), msg(11n)], hasMore: true });
    await tick();
    socket.reply(socket.last(Cmd.ACK), ResultSchema, { code: 0 });
    await tick();
    pull = socket.last(Cmd.PULL);
    expect(bodyOf(PullRequestSchema, pull).afterMsgid).toBe(11n);
    socket.reply(pull, PullResponseSchema, { messages: [msg(12n)], hasMore: false });
    await tick();
    socket.reply(socket.last(Cmd.ACK), ResultSchema, { code: 0 });
    await tick();
    expect(socket.sentOf(Cmd.PULL)).toHaveLength(2);
    expect(socket.sentOf(Cmd.ACK).map((f) => bodyOf(AckSchema, f).msgids)).toEqual([[10n, 11n], [12n]]);
    expect(messages.map(([m, s]) => `${m.msgid}:${s}`)).toEqual(["10:push", "11:pull", "12:pull"]);
    // a later drop starts the back-off again from the first delay
    socket.drop();
    expect(statuses.at(-1)).toMatchObject({ status: "reconnecting", retryInMs: 750 });
  });

  it("caps the back-off", async () => {
    const { client, sockets, statuses } = setup();
    client.start();
    await tick();
    for (let i = 0; i < 8; i++) {
      sockets[sockets.length - 1].drop();
      await vi.advanceTimersByTimeAsync(statuses.at(-1)?.retryInMs ?? 0);
    }
    expect(statuses.filter((s) => s.status === "reconnecting" && s.retryInMs).map((s) => s.retryInMs)).toEqual([
      750, 1500, 3000, 6000, 6000, 6000, 6000, 6000,
    ]);
  });

  it("stops on KICKOUT LOGIN_ELSEWHERE and says so", async () => {
    const { client, sockets, statuses } = setup();
    const kicks: number[] = [];
    client.onKickout((k) => kicks.push(k.reasonCode));
    client.start();
    const socket = await login(sockets);
    socket.push(Cmd.KICKOUT, KickoutSchema, { reasonCode: KickReason.LOGIN_ELSEWHERE, reason: "logged in elsewhere" });
    socket.drop(1000);
    await vi.advanceTimersByTimeAsync(600_000);
    expect(kicks).toEqual([1]);
    expect(sockets).toHaveLength(1);
    expect(statuses.at(-1)).toEqual({ status: "kicked", detail: "kicked out: LOGIN_ELSEWHERE (logged in elsewhere)" });
    await expect(client.whenConnected()).rejects.toThrow("kicked");
  });

  it("reconnects after KICKOUT SHUTDOWN", async () => {
    const { client, sockets } = setup();
    client.start();
    const socket = await login(sockets);
    socket.push(Cmd.KICKOUT, KickoutSchema, { reasonCode: KickReason.SHUTDOWN });
    expect(client.currentStatus).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(750);
    expect(sockets).toHaveLength(2);
  });

  it("stops when the login is refused UNAUTHORIZED, retries when RATE_LIMITED", async () => {
    const refused = setup();
    refused.client.start();
    await login(refused.sockets, { code: Code.UNAUTHORIZED });
    expect(refused.statuses.at(-1)?.status).toBe("failed");
    expect(refused.statuses.at(-1)?.detail).toContain("UNAUTHORIZED");
    await vi.advanceTimersByTimeAsync(600_000);
    expect(refused.sockets).toHaveLength(1);

    const limited = setup();
    limited.client.start();
    await login(limited.sockets, { code: Code.RATE_LIMITED });
    expect(limited.client.currentStatus).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(750);
    expect(limited.sockets).toHaveLength(2);
  });

  it("fails at once when the token provider says retrying cannot help", async () => {
    const { client, sockets, statuses } = setup({ token: () => Promise.reject(new FatalError("demo tokens refused (403)")) });
    client.start();
    await tick();
    expect(statuses.at(-1)).toEqual({ status: "failed", detail: "demo tokens refused (403)" });
    expect(sockets).toHaveLength(0);
  });

  it("resends a C2C with the same client_msg_id after UNAVAILABLE and after a lost connection", async () => {
    const { client, sockets } = setup();
    client.start();
    let socket = await login(sockets);
    const sent = client.sendC2C({ toUid: 2n ** 63n - 1n, toAppcode: 1002, msgtype: 10, content: new Uint8Array([1]), clientMsgId: "cm-1" });
    await tick();
    let req = socket.last(Cmd.C2C);
    expect(req.msgtype).toBe(10);
    expect(bodyOf(C2CRequestSchema, req)).toMatchObject({ toUid: 2n ** 63n - 1n, toAppcode: 1002, clientMsgId: "cm-1" });
    socket.reply(req, ResultSchema, { code: Code.UNAVAILABLE });
    await vi.advanceTimersByTimeAsync(750);
    expect(socket.sentOf(Cmd.C2C)).toHaveLength(2);
    socket.drop(); // the answer to the second is lost
    await vi.advanceTimersByTimeAsync(750);
    socket = await login(sockets);
    await vi.advanceTimersByTimeAsync(1500);
    req = socket.last(Cmd.C2C);
    expect(bodyOf(C2CRequestSchema, req).clientMsgId).toBe("cm-1");
    socket.reply(req, ResultSchema, { code: 0, msgid: 99n, logid: "63" });
    await expect(sent).resolves.toMatchObject({ msgid: 99n, logid: "63" });
  });

  it("does not resend a C2C refused BAD_REQUEST", async () => {
    const { client, sockets } = setup();
    client.start();
    const socket = await login(sockets);
    const sent = client.sendC2C({ toUid: 1n, toAppcode: 1, msgtype: 10, content: new Uint8Array(), clientMsgId: "x" });
    await tick();
    socket.reply(socket.last(Cmd.C2C), ResultSchema, { code: Code.BAD_REQUEST, reason: "rich content: a bare '<'" });
    await expect(sent).rejects.toBeInstanceOf(ResponseError);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(socket.sentOf(Cmd.C2C)).toHaveLength(1);
  });

  it("after a C2C refused RATE_LIMITED, refuses new ones itself until the pause is over", async () => {
    const { client, sockets } = setup();
    client.start();
    const socket = await login(sockets);
    const c2c = (id: string) => client.sendC2C({ toUid: 5n, toAppcode: 1002, msgtype: 10, content: new Uint8Array([1]), clientMsgId: id });
    const first = c2c("a");
    await tick();
    socket.reply(socket.last(Cmd.C2C), ResultSchema, { code: Code.RATE_LIMITED, reason: "over capacity" });
    await expect(first).rejects.toMatchObject({ code: Code.RATE_LIMITED, reason: "over capacity" });
    // random 0.5: the first pause is 37.5 ms
    await expect(c2c("b")).rejects.toMatchObject({ code: Code.RATE_LIMITED, reason: expect.stringMatching(/^held back: the client pauses its sends/) as unknown });
    expect(socket.sentOf(Cmd.C2C)).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(38);
    const third = c2c("c");
    await tick();
    expect(socket.sentOf(Cmd.C2C)).toHaveLength(2);
    expect(bodyOf(C2CRequestSchema, socket.last(Cmd.C2C)).clientMsgId).toBe("c");
    socket.reply(socket.last(Cmd.C2C), ResultSchema, { code: Code.RATE_LIMITED });
    await expect(third).rejects.toBeInstanceOf(ResponseError);
    expect(client.sendPause?.remainingMs()).toBe(75); // the second in a row: twice as long
  });

  it("sends every C2C when the pause is turned off", async () => {
    const { client, sockets } = setup({ sendPause: false });
    client.start();
    const socket = await login(sockets);
    for (const id of ["a", "b"]) {
      const sent = client.sendC2C({ toUid: 5n, toAppcode: 1002, msgtype: 10, content: new Uint8Array([1]), clientMsgId: id });
      await tick();
      socket.reply(socket.last(Cmd.C2C), ResultSchema, { code: Code.RATE_LIMITED });
      await expect(sent).rejects.toMatchObject({ code: Code.RATE_LIMITED });
    }
    expect(socket.sentOf(Cmd.C2C)).toHaveLength(2);
    expect(client.sendPause).toBeNull();
  });

  it("logs out on stop() and does not come back", async () => {
    const { client, sockets } = setup();
    client.start();
    const socket = await login(sockets);
    client.stop();
    expect(socket.sentOf(Cmd.LOGOUT)).toHaveLength(1);
    expect(socket.closedByClient).not.toBeNull();
    expect(client.currentStatus).toBe("stopped");
    await vi.advanceTimersByTimeAsync(600_000);
    expect(sockets).toHaveLength(1);
  });

  it("gives up a connection that does not open and tries again", async () => {
    const { client, sockets } = setup();
    client.start();
    await tick();
    await vi.advanceTimersByTimeAsync(4999);
    expect(sockets[0].closedByClient).toBeNull();
    await vi.advanceTimersByTimeAsync(1);
    expect(sockets[0].closedByClient).not.toBeNull();
    expect(client.currentStatus).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(750);
    expect(sockets).toHaveLength(2);
  });

  it("closes on a frame it cannot decode and reconnects", async () => {
    const { client, sockets } = setup();
    client.start();
    const socket = await login(sockets);
    socket.deliver(new Uint8Array([0x58, 0xdb, 1, 2]));
    expect(socket.closedByClient).not.toBeNull();
    expect(client.currentStatus).toBe("reconnecting");
  });

  it("builds the same-origin URL", () => {
    expect(sameOriginUrl({ protocol: "https:", host: "chat.example:8443" })).toBe("wss://chat.example:8443/v1/ws");
    expect(sameOriginUrl({ protocol: "http:", host: "127.0.0.1:7070" })).toBe("ws://127.0.0.1:7070/v1/ws");
  });
});
