// The console page in happy-dom, over the real client and a fake socket: login
// (demo token or refused), conversation list with unread counts, opening a
// conversation, live messages, sending, kickout.
import { afterEach, describe, expect, it } from "vitest";
import {
  C2CRequestSchema,
  HistoryRequestSchema,
  HistoryResponseSchema,
  KickoutSchema,
  LoginResponseSchema,
  MessageSchema,
  ResultSchema,
} from "@shared/gen/msgplatform_pb";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { FatalError, MsgClient } from "@shared/client";
import { Cmd, KickReason } from "@shared/protocol";
import { ConsoleApp } from "../console/src/app";
import { memoryStorage } from "../console/src/store";
import { fetchDemoToken } from "../console/src/token";
import { FakeSocket, bodyOf, factory } from "./fakesocket";

const flush = () => new Promise((resolve) => setTimeout(resolve, 0));
const enc = new TextEncoder();
let app: ConsoleApp | null = null;

afterEach(() => {
  app?.logout();
  app?.root.remove();
  app = null;
});

function $(sel: string): HTMLElement {
  const el = document.querySelector<HTMLElement>(sel);
  if (!el) {
    throw new Error(`no ${sel}`);
  }
  return el;
}

function type(sel: string, value: string): void {
  const el = $(sel) as HTMLInputElement;
  el.value = value;
  el.dispatchEvent(new Event("input"));
}

function msg(msgid: bigint, fromUid: bigint, fromAppcode: number, text: string, msgtype = 10): MessageInitShape<typeof MessageSchema> {
  return { msgid, fromUid, fromAppcode, toUid: 42n, toAppcode: 1001, msgtype, content: enc.encode(text), sendTimeMs: 1_767_225_600_000n, kind: 1 };
}

function mount(fetchToken: typeof fetchDemoToken) {
  const f = factory();
  app = new ConsoleApp({
    fetchToken,
    storage: memoryStorage(),
    makeClient: (me, token) => new MsgClient({ url: "ws://t/v1/ws", appcode: me.appcode, uid: me.uid, token, socket: f.make }),
  });
  document.body.append(app.root);
  return f.sockets;
}

async function logIn(sockets: FakeSocket[]): Promise<FakeSocket> {
  type('[data-testid="login-appcode"]', "1001");
  type('[data-testid="login-uid"]', "42");
  $('[data-testid="login-submit"]').click();
  await flush();
  const socket = sockets[0];
  socket.open();
  socket.reply(socket.last(Cmd.LOGIN), LoginResponseSchema, { code: 0, sessionId: "s1", heartbeatS: 60 });
  await flush();
  return socket;
}

describe("console page", () => {
  it("shows why a demo token was refused and offers the token field", async () => {
    const sockets = mount(async () => {
      throw new FatalError("this node does not hand out demo tokens (HTTP 403: not the demo apps)");
    });
    type('[data-testid="login-uid"]', "42");
    $('[data-testid="login-submit"]').click();
    await flush();
    expect($('[data-testid="login-error"]').hidden).toBe(false);
    expect($('[data-testid="login-error"]').textContent).toContain("HTTP 403");
    expect($('[data-testid="workspace"]').hidden).toBe(true);
    expect(document.activeElement).toBe($('[data-testid="login-token"]'));
    expect(sockets).toHaveLength(0);
  });

  it("refuses a pasted token that cannot be one, logs in with one that can", async () => {
    const sockets = mount(async () => ({ token: "unused", expiresAt: 0 }));
    type('[data-testid="login-uid"]', "42");
    type('[data-testid="login-token"]', "not a token");
    $('[data-testid="login-submit"]').click();
    await flush();
    expect($('[data-testid="login-error"]').textContent).toContain("not a token");
    type('[data-testid="login-token"]', `4102444800:${"ab".repeat(32)}`);
    $('[data-testid="login-submit"]').click();
    await flush();
    expect(sockets).toHaveLength(1);
  });

  it("lists conversations with unread counts, opens one, receives, sends and is kicked out", async () => {
    const sockets = mount(async (appcode, uid) => ({ token: `tok-${appcode}-${uid}`, expiresAt: 0 }));
    const socket = await logIn(sockets);
    expect($('[data-testid="status"]').textContent).toBe("connected");
    expect($('[data-testid="status"]').dataset.status).toBe("connected");
    // the overview: HISTORY without a peer
    const overview = socket.last(Cmd.HISTORY);
    expect(bodyOf(HistoryRequestSchema, overview)).toMatchObject({ peerUid: 0n, beforeMsgid: 0n, limit: 100 });
    socket.reply(overview, HistoryResponseSchema, { messages: [msg(11n, 7n, 1002, "hello <font color=\"red\">agent</font>"), msg(10n, 7n, 1002, "first")] });
    await flush();
    const item = $('[data-testid="conversation"][data-peer="7:1002"]');
    expect(item.querySelector<HTMLElement>('[data-testid="unread"]')?.textContent).toBe("2");
    // a live message from someone new: a second conversation, on top, ACKed
    socket.push(Cmd.C2C, MessageSchema, msg(20n, 2n ** 60n, 1001, "<shake />help!"), 1);
    await flush();
    expect(Array.from(document.querySelectorAll<HTMLElement>('[data-testid="conversation"]')).map((e) => e.dataset.peer))
      .toEqual([`${2n ** 60n}:1001`, "7:1002"]);
    expect(socket.sentOf(Cmd.ACK)).toHaveLength(1);
    // open 7:1002: its HISTORY page, unread gone
    item.click();
    await flush();
    const page = socket.last(Cmd.HISTORY);
    expect(bodyOf(HistoryRequestSchema, page)).toMatchObject({ peerUid: 7n, beforeMsgid: 0n });
    socket.reply(page, HistoryResponseSchema, { messages: [msg(11n, 7n, 1002, "dup"), msg(9n, 7n, 1002, "older")], hasMore: true });
    await flush();
    const bubbles = Array.from(document.querySelectorAll<HTMLElement>('[data-testid="message"]'));
    expect(bubbles.map((b) => b.dataset.msgid)).toEqual(["9", "10", "11"]);
    expect(bubbles[2].querySelector("span.rt-font")?.textContent).toBe("agent");
    expect($('[data-testid="conversation"][data-peer="7:1002"] [data-testid="unread"]').hidden).toBe(true);
    expect($('[data-testid="load-older"]').hidden).toBe(false);
    // send: rich markup on msgtype 10 with a client_msg_id
    type('[data-testid="composer-input"]', "a < b & 你好");
    ($('[data-testid="composer-size"]') as HTMLSelectElement).value = "20";
    $('[data-testid="composer-size"]').dispatchEvent(new Event("change"));
    expect($('[data-testid="composer-preview"] span.rt-font').textContent).toBe("a < b & 你好");
    $('[data-testid="send-button"]').click();
    await flush();
    const c2c = socket.last(Cmd.C2C);
    const body = bodyOf(C2CRequestSchema, c2c);
    expect(c2c.msgtype).toBe(10);
    expect(body).toMatchObject({ toUid: 7n, toAppcode: 1002 });
    expect(new TextDecoder().decode(body.content)).toBe('<font size="20">a &lt; b &amp; 你好</font>');
    expect(body.clientMsgId).toMatch(/^[0-9a-f-]{36}$/);
    const sending = $('[data-testid="message"][data-state="sending"]');
    expect(sending.dataset.clientMsgId).toBe(body.clientMsgId);
    socket.reply(c2c, ResultSchema, { code: 0, msgid: 30n, serverTimeMs: 1_767_225_601_000n });
    await flush();
    expect($('[data-testid="message"][data-msgid="30"]').dataset.state).toBe("sent");
    // kicked out: the banner says so, nothing reconnects
    socket.push(Cmd.KICKOUT, KickoutSchema, { reasonCode: KickReason.LOGIN_ELSEWHERE, reason: "logged in elsewhere" }, 2);
    await flush();
    expect($('[data-testid="status"]').textContent).toBe("kicked out");
    expect($('[data-testid="banner"]').hidden).toBe(false);
    expect($('[data-testid="banner-text"]').textContent).toContain("logged in elsewhere");
    expect(sockets).toHaveLength(1);
  });

  it("starts a new conversation from a typed uid and appcode, not with oneself", async () => {
    const sockets = mount(async () => ({ token: "t", expiresAt: 0 }));
    const socket = await logIn(sockets);
    socket.reply(socket.last(Cmd.HISTORY), HistoryResponseSchema, {});
    await flush();
    type('[data-testid="new-peer-uid"]', "42");
    type('[data-testid="new-peer-appcode"]', "1001");
    $('[data-testid="new-conversation-submit"]').click();
    await flush();
    expect($('[data-testid="new-conversation-error"]').textContent).toContain("That is you");
    type('[data-testid="new-peer-uid"]', "9223372036854775807");
    type('[data-testid="new-peer-appcode"]', "1002");
    $('[data-testid="new-conversation-submit"]').click();
    await flush();
    expect($('[data-testid="conversation"].open').dataset.peer).toBe("9223372036854775807:1002");
    expect($('[data-testid="chat-peer"]').textContent).toContain("9223372036854775807");
  });
});

describe("fetchDemoToken", () => {
  it("posts appcode and uid (as a string) and reads the token", async () => {
    const calls: [string, RequestInit | undefined][] = [];
    const token = await fetchDemoToken(1001, 2n ** 63n - 1n, async (input, init) => {
      calls.push([input, init]);
      return new Response(JSON.stringify({ token: "t", expires_at: 5 }), { status: 200 });
    });
    expect(token).toEqual({ token: "t", expiresAt: 5 });
    expect(calls[0][0]).toBe("/console/demo-token");
    expect(JSON.parse(String(calls[0][1]?.body))).toEqual({ appcode: 1001, uid: "9223372036854775807" });
  });

  it("is final on 403 and not on a network error or 503", async () => {
    await expect(fetchDemoToken(1, 1n, async () => new Response(JSON.stringify({ error: "not on loopback" }), { status: 403 })))
      .rejects.toThrow(FatalError);
    await expect(fetchDemoToken(1, 1n, async () => new Response(JSON.stringify({ error: "not on loopback" }), { status: 403 })))
      .rejects.toThrow("HTTP 403: not on loopback");
    const network = fetchDemoToken(1, 1n, async () => {
      throw new TypeError("Failed to fetch");
    });
    await expect(network).rejects.not.toBeInstanceOf(FatalError);
    await expect(fetchDemoToken(1, 1n, async () => new Response("busy", { status: 503 }))).rejects.toThrow("HTTP 503: busy");
  });
});
