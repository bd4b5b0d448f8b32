// The customer-service console: log in as an agent (appcode + uid, a demo
// token or a pasted one), see conversations from HISTORY with unread counts,
// read and page a conversation, receive live messages (ACKed by the client),
// send C2C (rich on msgtype 10), and stay connected through drops.
import { ConnectionLost, FatalError, MsgClient, RequestTimeout, ResponseError, sameOriginUrl } from "@shared/client";
import type { StatusEvent } from "@shared/client";
import type { Message } from "@shared/gen/msgplatform_pb";
import { h, show } from "@shared/dom";
import { renderContent } from "./richdom";
import { Composer, RICH_MSGTYPES } from "./composer";
import type { Outgoing } from "./composer";
import { ConsoleStore, parsePeerKey, peerKey } from "./store";
import type { ChatMessage, Identity, MarkerStorage } from "./store";
import { checkPastedToken, fetchDemoToken, newClientMsgId, parseAppcode, parseUid } from "./token";

const OVERVIEW_PAGES = 3;
const PAGE = 50;
const STATUS_TEXT: Record<string, string> = {
  idle: "offline", connecting: "connecting", connected: "connected", reconnecting: "reconnecting",
  kicked: "kicked out", failed: "login failed", stopped: "offline",
};

export interface AppOptions {
  /** Makes the client (tests pass one over a fake socket). */
  makeClient?: (me: Identity, token: () => Promise<string>) => MsgClient;
  fetchToken?: typeof fetchDemoToken;
  storage?: MarkerStorage;
}

function describe(error: unknown): string {
  if (error instanceof ResponseError) {
    return error.message;
  }
  if (error instanceof ConnectionLost || error instanceof RequestTimeout) {
    return "no answer from the node";
  }
  return error instanceof Error ? error.message : String(error);
}

function timeOf(ms: number): string {
  if (!ms) {
    return "";
  }
  const d = new Date(ms);
  const today = new Date();
  return d.toDateString() === today.toDateString()
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

function peerLabel(peer: Identity): string {
  return peer.uid === 0n ? "System (app server)" : `uid ${peer.uid} · app ${peer.appcode}`;
}

export class ConsoleApp {
  readonly root: HTMLElement;
  private client: MsgClient | null = null;
  private store: ConsoleStore | null = null;
  private everConnected = false;
  private overviewLoaded = false;
  private readonly elements = new Map<string, { rev: number; el: HTMLElement }>();
  private readonly shaken = new Set<string>();
  private renderQueued = false;
  // login
  private readonly loginView: HTMLElement;
  private readonly loginAppcode: HTMLInputElement;
  private readonly loginUid: HTMLInputElement;
  private readonly loginToken: HTMLTextAreaElement;
  private readonly loginSubmit: HTMLButtonElement;
  private readonly loginError: HTMLElement;
  // workspace
  private readonly workspace: HTMLElement;
  private readonly meLabel: HTMLElement;
  private readonly logoutButton: HTMLButtonElement;
  private readonly list: HTMLElement;
  private readonly newUid: HTMLInputElement;
  private readonly newAppcode: HTMLInputElement;
  private readonly newError: HTMLElement;
  private readonly chat: HTMLElement;
  private readonly chatTitle: HTMLElement;
  private readonly chatNote: HTMLElement;
  private readonly messages: HTMLElement;
  private readonly loadOlder: HTMLButtonElement;
  private readonly emptyChat: HTMLElement;
  private readonly composer: Composer;
  private readonly banner: HTMLElement;
  private readonly bannerText: HTMLElement;
  // status bar
  private readonly status: HTMLElement;
  private readonly statusDetail: HTMLElement;

  constructor(private readonly options: AppOptions = {}) {
    this.loginAppcode = h("input", { testid: "login-appcode", attrs: { id: "login-appcode", inputmode: "numeric", value: "1001", autocomplete: "off" } });
    this.loginUid = h("input", { testid: "login-uid", attrs: { id: "login-uid", inputmode: "numeric", placeholder: "e.g. 42", autocomplete: "off" } });
    this.loginToken = h("textarea", { testid: "login-token", attrs: { id: "login-token", rows: "2", spellcheck: "false",
      placeholder: "Leave empty on the demo apps; else paste a token from your app server (expires_at:mac)" } });
    this.loginSubmit = h("button", { testid: "login-submit", className: "primary", text: "Log in", attrs: { type: "submit" } });
    this.loginError = h("div", { testid: "login-error", className: "form-error", attrs: { role: "alert" } });
    show(this.loginError, false);
    this.loginView = h("section", { className: "login", testid: "login" },
      h("form", { className: "card", on: { submit: (ev) => { ev.preventDefault(); void this.login(); } } },
        h("h1", { text: "Customer-service console" }),
        h("p", { className: "hint", text: "Log in as an agent. On the demo apps (1001 customer, 1002 driver) the node hands out a token for you." }),
        h("label", { attrs: { for: "login-appcode" }, text: "App code" }), this.loginAppcode,
        h("label", { attrs: { for: "login-uid" }, text: "User id (uid)" }), this.loginUid,
        h("label", { attrs: { for: "login-token" }, text: "Token (optional)" }), this.loginToken,
        this.loginError, this.loginSubmit));

    this.meLabel = h("span", { className: "me", testid: "me" });
    this.logoutButton = h("button", { testid: "logout", text: "Log out", attrs: { type: "button" }, on: { click: () => this.logout() } });
    this.newUid = h("input", { testid: "new-peer-uid", attrs: { inputmode: "numeric", placeholder: "peer uid", "aria-label": "peer uid" } });
    this.newAppcode = h("input", { testid: "new-peer-appcode", attrs: { inputmode: "numeric", placeholder: "app", value: "1001", "aria-label": "peer appcode" } });
    this.newError = h("div", { testid: "new-conversation-error", className: "form-error small", attrs: { role: "alert" } });
    show(this.newError, false);
    this.list = h("ul", { className: "conversations", testid: "conversations" });
    this.chatTitle = h("h2", { testid: "chat-peer", className: "chat-title" });
    this.chatNote = h("span", { testid: "chat-note", className: "chat-note" });
    this.loadOlder = h("button", { testid: "load-older", className: "load-older", text: "Load older messages",
      attrs: { type: "button" }, on: { click: () => void this.loadHistory() } });
    this.messages = h("div", { className: "messages", testid: "messages", attrs: { "aria-live": "polite" } });
    this.emptyChat = h("div", { className: "empty", testid: "empty-chat", text: "Pick a conversation on the left, or start a new one." });
    this.composer = new Composer((out) => this.send(out));
    this.bannerText = h("span", { testid: "banner-text" });
    this.banner = h("div", { className: "banner", testid: "banner", attrs: { role: "alert" } }, this.bannerText,
      h("button", { testid: "relogin", text: "Log in again", attrs: { type: "button" }, on: { click: () => this.logout() } }));
    show(this.banner, false);
    this.chat = h("section", { className: "chat" },
      h("div", { className: "chat-head" }, this.chatTitle, this.chatNote),
      h("div", { className: "scroll" }, this.loadOlder, this.messages),
      this.emptyChat, this.composer.element);
    this.chat.addEventListener("animationend", () => this.chat.classList.remove("shake"));
    this.workspace = h("section", { className: "workspace", testid: "workspace" },
      h("aside", { className: "sidebar" },
        h("form", { className: "new-conversation", on: { submit: (ev) => { ev.preventDefault(); this.startConversation(); } } },
          h("div", { className: "row" }, this.newUid, this.newAppcode,
            h("button", { testid: "new-conversation-submit", text: "Start", attrs: { type: "submit", title: "Start a conversation" } })),
          this.newError),
        this.list),
      this.chat);

    this.status = h("span", { testid: "status", className: "status", text: "offline", attrs: { "data-status": "idle" } });
    this.statusDetail = h("span", { testid: "status-detail", className: "status-detail" });
    this.root = h("div", { className: "app" },
      h("header", { className: "topbar" }, h("span", { className: "brand", text: "msgplatform · console" }), this.meLabel, this.logoutButton),
      this.banner,
      h("main", {}, this.loginView, this.workspace),
      h("footer", { className: "statusbar" }, h("span", { className: "dot" }), this.status, this.statusDetail));
    this.showLogin(null);
    document.addEventListener("visibilitychange", () => this.store?.setViewing(document.visibilityState === "visible"));
  }

  // --- login -----------------------------------------------------------------

  private showLogin(error: string | null): void {
    show(this.loginView, true);
    show(this.workspace, false);
    show(this.logoutButton, false);
    this.meLabel.textContent = "";
    this.loginError.textContent = error ?? "";
    show(this.loginError, error !== null);
    this.loginSubmit.disabled = false;
  }

  async login(): Promise<void> {
    const appcode = parseAppcode(this.loginAppcode.value);
    const uid = parseUid(this.loginUid.value);
    if (appcode === null || uid === null) {
      this.showLogin(appcode === null ? "The app code is a number from 1 to 4294967295." : "The uid is a number from 1 to 2^63 − 1.");
      return;
    }
    const pasted = this.loginToken.value.trim();
    let token: () => Promise<string>;
    this.loginSubmit.disabled = true;
    if (pasted) {
      if (checkPastedToken(pasted) === null) {
        this.showLogin("That is not a token: a token reads <expires_at>:<64 hex digits>.");
        return;
      }
      token = () => Promise.resolve(pasted);
    } else {
      const fetchToken = this.options.fetchToken ?? fetchDemoToken;
      let first: string | null;
      try {
        first = (await fetchToken(appcode, uid)).token;
      } catch (error) {
        this.showLogin(describe(error));
        if (error instanceof FatalError) {
          this.loginToken.focus();
        }
        return;
      }
      token = async () => {
        if (first !== null) {
          const t = first;
          first = null;
          return t;
        }
        return (await fetchToken(appcode, uid)).token;
      };
    }
    this.begin({ uid, appcode }, token);
  }

  private begin(me: Identity, token: () => Promise<string>): void {
    const storage = this.options.storage ?? (typeof localStorage !== "undefined" ? localStorage : undefined);
    this.store = new ConsoleStore(me, storage);
    this.store.setViewing(typeof document.visibilityState !== "string" || document.visibilityState === "visible");
    this.store.onChange(() => this.scheduleRender());
    this.elements.clear();
    this.everConnected = false;
    this.overviewLoaded = false;
    const client = this.options.makeClient
      ? this.options.makeClient(me, token)
      : new MsgClient({ url: sameOriginUrl(location), appcode: me.appcode, uid: me.uid, token,
        deviceId: `console ${navigator.userAgent}`.slice(0, 64), clientVersion: "msgplatform-console/1" });
    this.client = client;
    client.onStatus((s) => this.statusChanged(client, s));
    client.onLogin(() => void this.loggedIn(client));
    client.onMessage((m) => this.received(m));
    this.meLabel.textContent = `uid ${me.uid} · app ${me.appcode}`;
    show(this.loginView, false);
    show(this.workspace, true);
    show(this.logoutButton, true);
    show(this.banner, false);
    this.loginError.textContent = "";
    this.scheduleRender();
    client.start();
  }

  logout(): void {
    this.client?.stop();
    this.client = null;
    this.store = null;
    this.shaken.clear();
    show(this.banner, false);
    this.setStatus("idle", "");
    this.showLogin(null);
    document.title = "msgplatform console";
  }

  private statusChanged(client: MsgClient, s: StatusEvent): void {
    if (client !== this.client) {
      return;
    }
    let detail = s.detail;
    if (s.status === "reconnecting" && s.retryInMs !== undefined) {
      detail = `${s.detail} — retrying in ${Math.max(1, Math.round(s.retryInMs / 1000))} s`;
    }
    this.setStatus(s.status, detail);
    this.composer.setEnabled(s.status === "connected" || s.status === "reconnecting" || s.status === "connecting");
    if (s.status === "connected") {
      this.everConnected = true;
    } else if (s.status === "failed" && !this.everConnected) {
      this.client = null;
      this.store = null;
      this.showLogin(s.detail);
      this.setStatus("failed", s.detail);
    } else if (s.status === "kicked" || s.status === "failed") {
      const elsewhere = s.detail.includes("LOGIN_ELSEWHERE");
      this.bannerText.textContent = elsewhere
        ? "You logged in elsewhere (another tab or device took this session): this console stopped reconnecting."
        : `This console stopped: ${s.detail}.`;
      show(this.banner, true);
    }
  }

  private setStatus(status: string, detail: string): void {
    this.status.textContent = STATUS_TEXT[status] ?? status;
    this.status.dataset.status = status;
    this.statusDetail.textContent = detail;
    this.root.dataset.status = status;
  }

  private async loggedIn(client: MsgClient): Promise<void> {
    const store = this.store;
    if (!store) {
      return;
    }
    // Every login merges the newest page again (msgids de-duplicate); the first
    // one builds the conversation list from a few pages.
    const pages = this.overviewLoaded ? 1 : OVERVIEW_PAGES;
    let before = 0n;
    try {
      for (let i = 0; i < pages; i++) {
        const page = await client.history(0n, before, 100);
        store.addMessages(page.messages, false);
        if (!page.hasMore || page.messages.length === 0) {
          break;
        }
        before = page.messages[page.messages.length - 1].msgid;
      }
      this.overviewLoaded = true;
    } catch (error) {
      this.statusDetail.textContent = `history: ${describe(error)}`;
    }
    if (store.openKey !== null && store.conversations.get(store.openKey)?.cursor === null) {
      await this.loadHistory();
    }
  }

  private received(m: Message): void {
    const store = this.store;
    if (!store) {
      return;
    }
    store.addMessages([m], true);
  }

  // --- conversations -----------------------------------------------------

  private startConversation(): void {
    const store = this.store;
    if (!store) {
      return;
    }
    const uid = parseUid(this.newUid.value);
    const appcode = parseAppcode(this.newAppcode.value);
    let error: string | null = null;
    if (uid === null) {
      error = "The peer uid is a number from 1 to 2^63 − 1.";
    } else if (appcode === null) {
      error = "The peer app code is a number.";
    } else if (uid === store.me.uid && appcode === store.me.appcode) {
      error = "That is you: pick another uid or app code.";
    }
    this.newError.textContent = error ?? "";
    show(this.newError, error !== null);
    if (error !== null || uid === null || appcode === null) {
      return;
    }
    this.newUid.value = "";
    this.open(peerKey({ uid, appcode }));
  }

  open(key: string): void {
    const store = this.store;
    if (!store) {
      return;
    }
    store.open(key);
    this.composer.focus();
    if (store.conversations.get(key)?.cursor === null) {
      void this.loadHistory();
    }
  }

  /** The next older HISTORY page of the open conversation. */
  async loadHistory(): Promise<void> {
    const store = this.store;
    const client = this.client;
    const key = store?.openKey;
    if (!store || !client || !key || client.currentStatus !== "connected") {
      return;
    }
    const c = store.conversations.get(key);
    if (!c) {
      return;
    }
    this.loadOlder.disabled = true;
    try {
      const page = await client.history(c.peer.uid, c.cursor ?? 0n, PAGE);
      store.addMessages(page.messages, false);
      const last = page.messages.at(-1);
      store.paged(key, last ? last.msgid : (c.cursor ?? 0n), page.hasMore && last !== undefined);
    } catch (error) {
      this.statusDetail.textContent = `history: ${describe(error)}`;
    } finally {
      this.loadOlder.disabled = false;
    }
  }

  // --- sending -------------------------------------------------------------

  private send(out: Outgoing): void {
    const store = this.store;
    const key = store?.openKey;
    if (!store || !key) {
      return;
    }
    const peer = parsePeerKey(key);
    if (peer.uid === 0n) {
      return;
    }
    const id = newClientMsgId();
    store.addSending(peer, id, out.msgtype, out.content, Date.now());
    this.deliver(peer, id, out);
  }

  private deliver(peer: Identity, clientMsgId: string, out: Outgoing): void {
    const client = this.client;
    const store = this.store;
    if (!client || !store) {
      return;
    }
    client.sendC2C({ toUid: peer.uid, toAppcode: peer.appcode, msgtype: out.msgtype, content: out.content, clientMsgId })
      .then((result) => store.confirmSent(peer, clientMsgId, result.msgid, Number(result.serverTimeMs)))
      .catch((error: unknown) => store.setSendState(peer, clientMsgId, "failed", describe(error)));
  }

  private retry(m: ChatMessage): void {
    const store = this.store;
    if (!store || m.clientMsgId === null) {
      return;
    }
    store.setSendState(m.to, m.clientMsgId, "sending", null);
    this.deliver(m.to, m.clientMsgId, { msgtype: m.msgtype, content: m.content });
  }

  // --- rendering -----------------------------------------------------------

  private scheduleRender(): void {
    if (this.renderQueued) {
      return;
    }
    this.renderQueued = true;
    queueMicrotask(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  render(): void {
    const store = this.store;
    if (!store) {
      return;
    }
    let total = 0;
    const items = store.list().map((c) => {
      const unread = store.unread(c.key);
      total += unread;
      const last = store.lastOf(c);
      const preview = last ? renderContent(last.content, RICH_MSGTYPES.has(last.msgtype)).fragment.textContent ?? "" : "No messages yet";
      const badge = h("span", { testid: "unread", className: "badge", text: String(unread), attrs: { "aria-label": `${unread} unread` } });
      show(badge, unread > 0);
      const item = h("li", { testid: "conversation", className: `conversation${c.key === store.openKey ? " open" : ""}${unread ? " has-unread" : ""}`,
        attrs: { "data-peer": c.key, role: "button", tabindex: "0" },
        on: { click: () => this.open(c.key), keydown: (ev) => { if (ev.key === "Enter") this.open(c.key); } } },
        h("div", { className: "conv-top" }, h("span", { className: "conv-peer", text: peerLabel(c.peer) }), badge),
        h("div", { className: "conv-bottom" },
          h("span", { className: "conv-preview", text: `${last?.outgoing ? "You: " : ""}${preview.slice(0, 80)}` }),
          h("span", { className: "conv-time", text: last ? timeOf(last.sendTimeMs) : "" })));
      return item;
    });
    this.list.replaceChildren(...(items.length ? items : [h("li", { className: "empty small", text: "No conversations yet." })]));
    document.title = total ? `(${total}) msgplatform console` : "msgplatform console";
    this.renderChat(store);
  }

  private renderChat(store: ConsoleStore): void {
    const key = store.openKey;
    const c = key ? store.conversations.get(key) : undefined;
    show(this.emptyChat, !c);
    show(this.composer.element, Boolean(c) && c?.peer.uid !== 0n);
    show(this.loadOlder, Boolean(c?.hasMore) && c?.cursor !== undefined);
    if (!c || !key) {
      this.chatTitle.textContent = "";
      this.chatNote.textContent = "";
      this.messages.replaceChildren();
      return;
    }
    this.chatTitle.textContent = peerLabel(c.peer);
    this.chatNote.textContent = c.peer.uid === 0n ? "Pushed by the app server: there is no one to reply to." : "";
    this.chatTitle.dataset.peer = key;
    const scroller = this.messages.parentElement;
    const atBottom = !scroller || scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    const fromBottom = scroller ? scroller.scrollHeight - scroller.scrollTop : 0;
    const firstBefore = this.messages.firstElementChild;
    this.messages.replaceChildren(...store.messagesOf(key).map((m) => this.messageElement(m)));
    if (scroller) {
      if (atBottom) {
        scroller.scrollTop = scroller.scrollHeight;
      } else if (firstBefore && this.messages.firstElementChild !== firstBefore) {
        scroller.scrollTop = scroller.scrollHeight - fromBottom; // older page added above: stay put
      }
    }
  }

  private messageElement(m: ChatMessage): HTMLElement {
    const cached = this.elements.get(m.key);
    if (cached && cached.rev === m.rev) {
      return cached.el;
    }
    const rendered = renderContent(m.content, RICH_MSGTYPES.has(m.msgtype));
    const bubble = h("div", { className: `bubble ${m.outgoing ? "out" : "in"}${rendered.mode === "invalid" ? " invalid" : ""}` });
    bubble.append(rendered.fragment);
    bubble.addEventListener("animationend", () => bubble.classList.remove("shake"));
    const shakeKey = m.msgid?.toString() ?? m.key;
    if (rendered.shake && m.live && !this.shaken.has(shakeKey)) {
      this.shaken.add(shakeKey);
      bubble.classList.add("shake");
      this.chat.classList.add("shake");
      if (!m.outgoing && typeof navigator !== "undefined" && "vibrate" in navigator) {
        navigator.vibrate(200);
      }
    }
    const state = m.state === "sending" ? "sending…" : m.state === "failed" ? `not sent: ${m.error ?? ""}` : "";
    const meta = h("div", { className: "meta" },
      h("span", { className: "time", text: timeOf(m.sendTimeMs) }),
      m.outgoing && m.from.appcode !== this.store?.me.appcode ? h("span", { className: "via", text: `from app ${m.from.appcode}` }) : null,
      rendered.mode === "invalid" ? h("span", { className: "warn", text: "not valid rich text: shown as text", attrs: { title: rendered.error ?? "" } }) : null,
      state ? h("span", { className: `state ${m.state}`, testid: "message-state", text: state }) : null,
      m.state === "failed" ? h("button", { testid: "retry", className: "link", text: "Retry", attrs: { type: "button" }, on: { click: () => this.retry(m) } }) : null);
    const el = h("div", { testid: "message", className: `msg ${m.outgoing ? "out" : "in"} ${m.state}`,
      attrs: { "data-msgid": m.msgid?.toString() ?? "", "data-direction": m.outgoing ? "out" : "in", "data-state": m.state,
        "data-msgtype": String(m.msgtype), ...(m.clientMsgId ? { "data-client-msg-id": m.clientMsgId } : {}) } },
      bubble, meta);
    this.elements.set(m.key, { rev: m.rev, el });
    return el;
  }
}
