// The console's state: conversations grouped by peer (uid, appcode), their
// messages keyed by msgid (so HISTORY, pushes and PULL never show one twice),
// messages being sent (keyed by client_msg_id until the node gives a msgid),
// and unread counts: messages received after the last one viewed in that
// conversation (remembered per agent in localStorage).
import type { Message } from "@shared/gen/msgplatform_pb";

export interface Identity {
  uid: bigint;
  appcode: number;
}

export type MessageState = "received" | "sending" | "sent" | "failed";

export interface ChatMessage {
  /** The msgid in decimal, or "local:<client_msg_id>" until the node answered. */
  key: string;
  msgid: bigint | null;
  clientMsgId: string | null;
  from: Identity;
  to: Identity;
  msgtype: number;
  content: Uint8Array;
  sendTimeMs: number;
  outgoing: boolean;
  state: MessageState;
  error: string | null;
  /** Arrived while the page was open (a shake then animates). */
  live: boolean;
  /** Changes whenever the message does (the view re-renders on a new one). */
  rev: number;
}

export interface Conversation {
  peer: Identity;
  key: string;
  messages: Map<string, ChatMessage>;
  /** before_msgid of the next older HISTORY page; null: not loaded yet. */
  cursor: bigint | null;
  hasMore: boolean;
}

export function peerKey(peer: Identity): string {
  return `${peer.uid}:${peer.appcode}`;
}

export function parsePeerKey(key: string): Identity {
  const [uid, appcode] = key.split(":");
  return { uid: BigInt(uid), appcode: Number(appcode) };
}

/** Where the agent's "viewed up to" markers are kept (a Storage, or memory). */
export interface MarkerStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export function memoryStorage(): MarkerStorage {
  const data = new Map<string, string>();
  return { getItem: (k) => data.get(k) ?? null, setItem: (k, v) => void data.set(k, v) };
}

function same(a: Identity, b: Identity): boolean {
  return a.uid === b.uid && a.appcode === b.appcode;
}

export class ConsoleStore {
  readonly conversations = new Map<string, Conversation>();
  openKey: string | null = null;
  /** Whether the agent can see the page (document visible): only then is the open conversation read. */
  viewing = true;
  private viewed: Record<string, string>;
  private readonly storageKey: string;
  private readonly listeners = new Set<() => void>();
  private rev = 0;

  constructor(readonly me: Identity, private readonly storage: MarkerStorage = memoryStorage()) {
    this.storageKey = `msgplatform.console.viewed.${peerKey(me)}`;
    try {
      const parsed: unknown = JSON.parse(storage.getItem(this.storageKey) ?? "{}");
      this.viewed = parsed && typeof parsed === "object" ? (parsed as Record<string, string>) : {};
    } catch {
      this.viewed = {};
    }
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private changed(): void {
    for (const listener of this.listeners) {
      listener();
    }
  }

  /** The other side of a message, and whether the agent's uid sent it. */
  classify(m: { fromUid: bigint; fromAppcode: number; toUid: bigint; toAppcode: number }): { peer: Identity; outgoing: boolean } {
    const from = { uid: m.fromUid, appcode: m.fromAppcode };
    const to = { uid: m.toUid, appcode: m.toAppcode };
    if (m.fromUid === this.me.uid && !same(to, this.me)) {
      return { peer: to, outgoing: true }; // sent by me (from this or another terminal)
    }
    return { peer: from, outgoing: false };
  }

  conversation(peer: Identity): Conversation {
    const key = peerKey(peer);
    let c = this.conversations.get(key);
    if (!c) {
      c = { peer, key, messages: new Map(), cursor: null, hasMore: true };
      this.conversations.set(key, c);
    }
    return c;
  }

  /** Add messages from the node (HISTORY, push, PULL); each msgid once. */
  addMessages(messages: Message[], live: boolean): void {
    let any = false;
    for (const m of messages) {
      const { peer, outgoing } = this.classify(m);
      const c = this.conversation(peer);
      const key = m.msgid.toString();
      if (c.messages.has(key)) {
        continue;
      }
      any = true;
      c.messages.set(key, {
        key,
        msgid: m.msgid,
        clientMsgId: null,
        from: { uid: m.fromUid, appcode: m.fromAppcode },
        to: { uid: m.toUid, appcode: m.toAppcode },
        msgtype: m.msgtype,
        content: m.content,
        sendTimeMs: Number(m.sendTimeMs),
        outgoing,
        state: outgoing ? "sent" : "received",
        error: null,
        live,
        rev: ++this.rev,
      });
    }
    if (any) {
      if (this.openKey !== null && this.viewing) {
        this.markViewed(this.openKey);
      }
      this.changed();
    }
  }

  /** A message the agent is sending: shown at once, confirmed by confirmSent. */
  addSending(peer: Identity, clientMsgId: string, msgtype: number, content: Uint8Array, nowMs: number): ChatMessage {
    const c = this.conversation(peer);
    const message: ChatMessage = {
      key: `local:${clientMsgId}`,
      msgid: null,
      clientMsgId,
      from: this.me,
      to: peer,
      msgtype,
      content,
      sendTimeMs: nowMs,
      outgoing: true,
      state: "sending",
      error: null,
      live: true,
      rev: ++this.rev,
    };
    c.messages.set(message.key, message);
    this.changed();
    return message;
  }

  /** The node took it: from now on it is keyed by its msgid. */
  confirmSent(peer: Identity, clientMsgId: string, msgid: bigint, serverTimeMs: number): void {
    const c = this.conversation(peer);
    const local = c.messages.get(`local:${clientMsgId}`);
    if (!local) {
      return;
    }
    c.messages.delete(local.key);
    const key = msgid.toString();
    if (!c.messages.has(key)) {
      c.messages.set(key, { ...local, key, msgid, state: "sent", error: null,
        sendTimeMs: serverTimeMs || local.sendTimeMs, rev: ++this.rev });
    }
    this.changed();
  }

  setSendState(peer: Identity, clientMsgId: string, state: "sending" | "failed", error: string | null): void {
    const local = this.conversation(peer).messages.get(`local:${clientMsgId}`);
    if (local) {
      local.state = state;
      local.error = error;
      local.rev = ++this.rev;
      this.changed();
    }
  }

  /** Messages of a conversation, oldest first; those not yet confirmed last. */
  messagesOf(key: string): ChatMessage[] {
    const c = this.conversations.get(key);
    if (!c) {
      return [];
    }
    return [...c.messages.values()].sort((a, b) => {
      if (a.msgid === null || b.msgid === null) {
        return a.msgid === null ? (b.msgid === null ? a.rev - b.rev : 1) : -1;
      }
      return a.msgid < b.msgid ? -1 : a.msgid > b.msgid ? 1 : 0;
    });
  }

  lastOf(c: Conversation): ChatMessage | undefined {
    let last: ChatMessage | undefined;
    for (const m of c.messages.values()) {
      if (!last || (m.msgid ?? (1n << 64n)) > (last.msgid ?? (1n << 64n)) || (m.msgid === null && last.msgid === null && m.rev > last.rev)) {
        last = m;
      }
    }
    return last;
  }

  /** Conversations, the one with the newest message first (empty ones last, newest opened first). */
  list(): Conversation[] {
    const rank = (c: Conversation): bigint => {
      const last = this.lastOf(c);
      return last ? (last.msgid ?? (1n << 64n)) : -1n;
    };
    return [...this.conversations.values()].sort((a, b) => {
      const ra = rank(a);
      const rb = rank(b);
      return ra > rb ? -1 : ra < rb ? 1 : a.key.localeCompare(b.key);
    });
  }

  /** Received messages after the last one viewed in this conversation. */
  unread(key: string): number {
    const c = this.conversations.get(key);
    if (!c) {
      return 0;
    }
    const seen = BigInt(this.viewed[key] ?? "0");
    let n = 0;
    for (const m of c.messages.values()) {
      if (!m.outgoing && m.msgid !== null && m.msgid > seen) {
        n += 1;
      }
    }
    return n;
  }

  setViewing(viewing: boolean): void {
    this.viewing = viewing;
    if (viewing && this.openKey !== null) {
      this.markViewed(this.openKey);
      this.changed();
    }
  }

  open(key: string | null): void {
    this.openKey = key;
    if (key !== null) {
      this.conversation(parsePeerKey(key));
      this.markViewed(key);
    }
    this.changed();
  }

  /** Everything received in `key` so far counts as viewed. */
  markViewed(key: string): void {
    const c = this.conversations.get(key);
    if (!c) {
      return;
    }
    let max = BigInt(this.viewed[key] ?? "0");
    for (const m of c.messages.values()) {
      if (!m.outgoing && m.msgid !== null && m.msgid > max) {
        max = m.msgid;
      }
    }
    if (max > 0n && this.viewed[key] !== max.toString()) {
      this.viewed[key] = max.toString();
      try {
        this.storage.setItem(this.storageKey, JSON.stringify(this.viewed));
      } catch {
        // storage full or refused: the marker lives for this page only
      }
    }
  }

  /** Record a HISTORY page's cursor for the conversation it was loaded for. */
  paged(key: string, cursor: bigint, hasMore: boolean): void {
    const c = this.conversations.get(key);
    if (c) {
      c.cursor = cursor;
      c.hasMore = hasMore;
      this.changed();
    }
  }
}
