import { describe, expect, it } from "vitest";
import { create } from "@bufbuild/protobuf";
import { MessageSchema } from "@shared/gen/msgplatform_pb";
import type { Message } from "@shared/gen/msgplatform_pb";
import { ConsoleStore, memoryStorage } from "../console/src/store";

const me = { uid: 42n, appcode: 1001 };

function m(msgid: bigint, from: [bigint, number], to: [bigint, number], text = "x"): Message {
  return create(MessageSchema, { msgid, fromUid: from[0], fromAppcode: from[1], toUid: to[0], toAppcode: to[1],
    msgtype: 1, content: new TextEncoder().encode(text), sendTimeMs: 1000n + msgid });
}

describe("ConsoleStore", () => {
  it("groups by peer (uid, appcode), newest conversation first, each msgid once", () => {
    const s = new ConsoleStore(me);
    s.addMessages([m(5n, [7n, 1002], [42n, 1001]), m(3n, [42n, 1001], [7n, 1002]), m(4n, [8n, 1001], [42n, 1001])], false);
    s.addMessages([m(5n, [7n, 1002], [42n, 1001])], true);
    s.addMessages([m(6n, [0n, 0], [42n, 1001])], true); // an app server's push
    expect(s.list().map((c) => c.key)).toEqual(["0:0", "7:1002", "8:1001"]);
    expect(s.messagesOf("7:1002").map((x) => [x.msgid, x.outgoing])).toEqual([[3n, true], [5n, false]]);
  });

  it("counts what the agent's own uid sent from another app as outgoing, and a message to itself from another app as incoming", () => {
    const s = new ConsoleStore(me);
    expect(s.classify({ fromUid: 42n, fromAppcode: 1002, toUid: 9n, toAppcode: 1001 })).toEqual({ peer: { uid: 9n, appcode: 1001 }, outgoing: true });
    expect(s.classify({ fromUid: 42n, fromAppcode: 1002, toUid: 42n, toAppcode: 1001 })).toEqual({ peer: { uid: 42n, appcode: 1002 }, outgoing: false });
  });

  it("counts unread until the conversation is opened, and remembers across pages", () => {
    const storage = memoryStorage();
    const s = new ConsoleStore(me, storage);
    s.addMessages([m(1n, [7n, 1002], [42n, 1001]), m(2n, [7n, 1002], [42n, 1001]), m(3n, [42n, 1001], [7n, 1002])], false);
    expect(s.unread("7:1002")).toBe(2);
    s.open("7:1002");
    expect(s.unread("7:1002")).toBe(0);
    s.addMessages([m(4n, [7n, 1002], [42n, 1001])], true);
    expect(s.unread("7:1002")).toBe(0); // open and visible: read
    s.setViewing(false);
    s.addMessages([m(9n, [7n, 1002], [42n, 1001])], true);
    expect(s.unread("7:1002")).toBe(1);
    s.open(null);
    s.addMessages([m(10n, [7n, 1002], [42n, 1001])], true);
    expect(s.unread("7:1002")).toBe(2);
    const again = new ConsoleStore(me, storage);
    again.addMessages([m(4n, [7n, 1002], [42n, 1001]), m(9n, [7n, 1002], [42n, 1001])], false);
    expect(again.unread("7:1002")).toBe(1);
  });

  it("keys a sent message by client_msg_id until confirmed, then by msgid (history does not double it)", () => {
    const s = new ConsoleStore(me);
    const peer = { uid: 7n, appcode: 1002 };
    s.addSending(peer, "c1", 10, new Uint8Array([104]), 5);
    s.addSending(peer, "c2", 10, new Uint8Array([105]), 6);
    expect(s.messagesOf("7:1002").map((x) => x.key)).toEqual(["local:c1", "local:c2"]);
    s.setSendState(peer, "c2", "failed", "UNAVAILABLE");
    expect(s.messagesOf("7:1002")[1]).toMatchObject({ state: "failed", error: "UNAVAILABLE" });
    s.confirmSent(peer, "c1", 100n, 1234);
    s.addMessages([m(100n, [42n, 1001], [7n, 1002]), m(99n, [7n, 1002], [42n, 1001])], false);
    expect(s.messagesOf("7:1002").map((x) => [x.key, x.state])).toEqual([["99", "received"], ["100", "sent"], ["local:c2", "failed"]]);
    expect(s.messagesOf("7:1002")[1].clientMsgId).toBe("c1");
  });
});
