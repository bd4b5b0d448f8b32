// The operations dashboard: asks for an API key (kept in sessionStorage), then
// polls GET /v1/nodes and GET /v1/stats, draws the delivery rate and the ACK
// latency of the last minutes, and looks up a message's path by logid
// (GET /v1/trace/{logid}); the Drivers panel (./drivermap) plots the online
// drivers near a point (GET /v1/nearby). Everything the node says is shown as text
// (textContent): no markup is ever built from data.

// The console's element builder (createElement + textContent only).
import { h, show } from "@shared/dom";

import { Api, ApiError, type Fetch, logidProblem, tracePath, Unreachable } from "./api";
import { type ChartFactory, type LineChart, uplotChart } from "./charts";
import { DriverMap } from "./drivermap";
import { duration, percent, utc } from "./format";
import { KeyStore } from "./keystore";
import { ALL, routeKey, routeLabel, StatsHistory } from "./series";
import type { ClusterNode, Nodes, Stats, Trace } from "./types";

/** How often the nodes and the statistics are asked for. */
export const POLL_MS = 3000;

export interface Deps {
  fetch: Fetch;
  storage: Storage;
  now: () => number;
  setInterval: (fn: () => void, ms: number) => number;
  clearInterval: (id: number) => void;
  chart: ChartFactory;
}

export function browserDeps(): Deps {
  return {
    fetch: (input, init) => window.fetch(input, init),
    storage: window.sessionStorage,
    now: () => Date.now(),
    setInterval: (fn, ms) => window.setInterval(fn, ms),
    clearInterval: (id) => window.clearInterval(id),
    chart: uplotChart,
  };
}

export class Dashboard {
  readonly root: HTMLElement;
  private readonly keys: KeyStore;
  private api: Api | null = null;
  private timer: number | null = null;
  private polling = false;
  private readonly history = new StatsHistory();

  // The key form.
  private readonly keyForm: HTMLFormElement;
  private readonly keyInput: HTMLInputElement;
  private readonly keyError: HTMLElement;
  // The dashboard.
  private readonly board: HTMLElement;
  private readonly banner: HTMLElement;
  private readonly updated: HTMLElement;
  private readonly totals: { nodes: HTMLElement; connections: HTMLElement; sessions: HTMLElement;
    delivery: HTMLElement; latency: HTMLElement };
  private readonly nodeRows: HTMLTableSectionElement;
  private readonly latencyRoute: HTMLSelectElement;
  private readonly deliveryChart: LineChart;
  private readonly latencyChart: LineChart;
  private readonly traceInput: HTMLInputElement;
  private readonly traceError: HTMLElement;
  private readonly traceNotes: HTMLElement;
  private readonly traceRows: HTMLTableSectionElement;
  private readonly traceTable: HTMLTableElement;
  private readonly drivers: DriverMap;

  constructor(private readonly deps: Deps) {
    this.keys = new KeyStore(deps.storage);

    this.keyInput = h("input", {
      testid: "api-key-input",
      attrs: { type: "password", autocomplete: "off", spellcheck: "false", "aria-label": "API key",
        placeholder: "API key", required: "" },
    });
    this.keyError = h("p", { className: "error", testid: "api-key-error", attrs: { role: "alert" } });
    this.keyForm = h("form", { className: "key-form", testid: "api-key-form", on: { submit: (e) => this.onKey(e) } },
      h("h2", { text: "API key" }),
      h("p", { className: "muted", text: "The api_key of an app in the node's config. It is kept in this tab only (sessionStorage) and sent as a Bearer token to this node's API." }),
      h("div", { className: "row" }, this.keyInput,
        h("button", { testid: "api-key-submit", text: "Open the dashboard", attrs: { type: "submit" } })),
      this.keyError);
    show(this.keyError, false);

    this.banner = h("div", { className: "banner", testid: "error-banner", attrs: { role: "alert" } });
    show(this.banner, false);
    this.updated = h("span", { className: "muted", testid: "last-update" });
    const total = (testid: string) => h("strong", { testid, text: "–" });
    this.totals = {
      nodes: total("total-nodes"),
      connections: total("total-connections"),
      sessions: total("total-sessions"),
      delivery: total("total-delivery-rate"),
      latency: total("total-latency"),
    };
    this.nodeRows = h("tbody", { testid: "nodes" });
    this.latencyRoute = h("select", { testid: "latency-route", attrs: { "aria-label": "route" },
      on: { change: () => this.draw() } });
    this.latencyRoute.append(h("option", { text: "all routes", attrs: { value: ALL } }));
    const deliveryHost = h("div", { className: "chart", testid: "chart-delivery" });
    const latencyHost = h("div", { className: "chart", testid: "chart-latency" });
    this.deliveryChart = deps.chart(deliveryHost, { unit: "ACKed / accepted", format: (v) => percent(v), minMax: 1 });
    this.latencyChart = deps.chart(latencyHost, { unit: "ms", format: (v) => `${+v.toFixed(1)}` });

    this.traceInput = h("input", {
      testid: "trace-input",
      attrs: { type: "text", autocomplete: "off", spellcheck: "false", maxlength: "128",
        placeholder: "logid, e.g. order-7", "aria-label": "logid" },
    });
    this.traceError = h("p", { className: "error", testid: "trace-error", attrs: { role: "alert" } });
    this.traceNotes = h("p", { className: "muted", testid: "trace-notes" });
    this.traceRows = h("tbody", { testid: "trace-rows" });
    this.traceTable = h("table", { className: "grid", testid: "trace-table" },
      head(["time (UTC)", "node", "event", "msgid", "uid", "appcode"]), this.traceRows);
    show(this.traceError, false);
    show(this.traceTable, false);

    this.drivers = new DriverMap(deps.now);

    this.board = h("div", { className: "board", testid: "dashboard" },
      h("div", { className: "toolbar" }, this.updated,
        h("button", { testid: "api-key-forget", text: "Forget the key", attrs: { type: "button" },
          on: { click: () => this.signOut("") } })),
      h("section", { className: "totals", testid: "totals" },
        tile("nodes", this.totals.nodes), tile("connections", this.totals.connections),
        tile("sessions", this.totals.sessions),
        tile("delivery rate (node's window)", this.totals.delivery),
        tile("ACK latency p50 / p90 / p99", this.totals.latency)),
      h("section", {},
        h("h2", { text: "Nodes" }),
        h("table", { className: "grid", testid: "nodes-table" },
          head(["node", "gate", "connections", "sessions", "up since (UTC)"], [2, 3]), this.nodeRows)),
      h("section", { className: "charts" },
        h("div", {}, h("h2", { text: "Delivery rate" }),
          h("p", { className: "muted", text: "ACKed ÷ accepted over the last minute, per route (C2C, S2C); the last 10 minutes." }),
          deliveryHost),
        h("div", {}, h("h2", { text: "ACK latency" }),
          h("p", { className: "muted" }, "p50, p90 and p99 since the counts began, for ", this.latencyRoute),
          latencyHost)),
      this.drivers.root,
      h("section", {},
        h("h2", { text: "Message path" }),
        h("form", { className: "row", testid: "trace-form", on: { submit: (e) => this.onTrace(e) } },
          this.traceInput,
          h("button", { testid: "trace-submit", text: "Trace", attrs: { type: "submit" } })),
        this.traceError, this.traceNotes, this.traceTable));

    this.root = h("div", { className: "ops" },
      h("header", {}, h("h1", { text: "msgplatform operations" })),
      this.banner, this.keyForm, this.board);
  }

  /** Start with the key of this tab, if any; else ask for one. */
  start(): void {
    const key = this.keys.get();
    if (key) {
      this.open(key);
    } else {
      this.askKey("");
    }
  }

  stop(): void {
    if (this.timer !== null) {
      this.deps.clearInterval(this.timer);
      this.timer = null;
    }
  }

  resize(): void {
    this.deliveryChart.resize();
    this.latencyChart.resize();
  }

  private onKey(event: Event): void {
    event.preventDefault();
    const key = this.keyInput.value.trim();
    if (!key) {
      this.showKeyError("Enter an API key.");
      return;
    }
    this.keys.set(key);
    this.keyInput.value = "";
    this.open(key);
  }

  private open(key: string): void {
    this.api = new Api(key, this.deps.fetch);
    this.drivers.use(this.api);
    this.history.clear();
    show(this.keyForm, false);
    show(this.board, true);
    this.stop();
    this.timer = this.deps.setInterval(() => void this.poll(), POLL_MS);
    void this.poll();
  }

  private askKey(why: string): void {
    show(this.board, false);
    show(this.keyForm, true);
    this.showKeyError(why);
    this.keyInput.focus();
  }

  private showKeyError(text: string): void {
    this.keyError.textContent = text;
    show(this.keyError, text !== "");
  }

  /** Forget the key (refused, or the user asked) and ask for one again. */
  private signOut(why: string): void {
    this.stop();
    this.api = null;
    this.drivers.use(null);
    this.keys.clear();
    this.setBanner("");
    this.askKey(why);
  }

  private setBanner(text: string): void {
    this.banner.textContent = text;
    show(this.banner, text !== "");
  }

  /** One round: the nodes and the statistics. */
  async poll(): Promise<void> {
    const api = this.api;
    if (api === null || this.polling) {
      return;
    }
    this.polling = true;
    void this.drivers.refresh();
    try {
      const [nodes, stats] = await Promise.all([api.get<Nodes>("/v1/nodes"), api.get<Stats>("/v1/stats")]);
      if (api !== this.api) {
        return; // signed out meanwhile
      }
      this.setBanner("");
      this.showNodes(nodes.nodes);
      this.history.add(this.deps.now(), stats);
      this.showStats(stats);
      this.draw();
      this.updated.textContent = `updated ${utc(this.deps.now(), false)} (every ${POLL_MS / 1000} s)`;
    } catch (e) {
      if (api === this.api) {
        this.failed(e);
      }
    } finally {
      this.polling = false;
    }
  }

  /** An error's place: 401 asks for the key again, anything else is the banner. */
  private failed(error: unknown): void {
    if (error instanceof ApiError && error.status === 401) {
      this.signOut(`The node refused the API key (401: ${error.message}). Enter it again.`);
    } else if (error instanceof ApiError && error.status === 503) {
      this.setBanner(`A backend of the node is unavailable (503: ${error.message}). Retrying every ${POLL_MS / 1000} s.`);
    } else if (error instanceof ApiError) {
      this.setBanner(`The node answered ${error.status}: ${error.message}`);
    } else if (error instanceof Unreachable) {
      this.setBanner(`The node does not answer (${error.message}). Retrying every ${POLL_MS / 1000} s.`);
    } else {
      this.setBanner(`Something went wrong: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  private showNodes(nodes: ClusterNode[]): void {
    const now = this.deps.now();
    this.nodeRows.replaceChildren(...nodes.map((node) => h("tr", {
      testid: "node-row", attrs: { "data-node-id": String(node.node_id) },
    },
    h("td", { text: String(node.node_id) }),
    h("td", { text: node.gate ?? "– (no gate: starting or draining)" }),
    h("td", { className: "num", text: String(node.connections) }),
    h("td", { className: "num", text: String(node.sessions) }),
    h("td", { text: `${utc(node.since_ms, false)} (${duration(now - node.since_ms)})` }))));
    const sum = (f: (n: ClusterNode) => number) => String(nodes.reduce((a, n) => a + f(n), 0));
    this.totals.nodes.textContent = String(nodes.length);
    this.totals.connections.textContent = sum((n) => n.connections);
    this.totals.sessions.textContent = sum((n) => n.sessions);
  }

  private showStats(stats: Stats): void {
    this.totals.delivery.textContent = percent(stats.delivery_rate);
    const l = stats.ack_latency;
    const ms = (v: number | null) => (v === null ? "–" : `${v}`);
    this.totals.latency.textContent = `${ms(l.p50_ms)} / ${ms(l.p90_ms)} / ${ms(l.p99_ms)} ms`;
    const chosen = this.latencyRoute.value;
    const options = [h("option", { text: "all routes", attrs: { value: ALL } }),
      ...this.history.allRoutes().map((r) => h("option", { text: routeLabel(r), attrs: { value: routeKey(r) } }))];
    this.latencyRoute.replaceChildren(...options);
    this.latencyRoute.value = options.some((o) => o.value === chosen) ? chosen : ALL;
  }

  private draw(): void {
    this.deliveryChart.update(this.history.delivery());
    this.latencyChart.update(this.history.latency(this.latencyRoute.value || ALL));
  }

  private async onTrace(event: Event): Promise<void> {
    event.preventDefault();
    const api = this.api;
    const logid = this.traceInput.value.trim();
    const problem = logidProblem(logid);
    this.traceError.textContent = problem ?? "";
    show(this.traceError, problem !== null);
    if (problem !== null || api === null) {
      return;
    }
    this.traceNotes.textContent = `Looking up ${logid}…`;
    try {
      const trace = await api.get<Trace>(tracePath(logid));
      this.showTrace(logid, trace);
    } catch (e) {
      this.traceNotes.textContent = "";
      show(this.traceTable, false);
      if (e instanceof ApiError && e.status === 400) {
        this.traceError.textContent = e.message;
        show(this.traceError, true);
      } else {
        this.failed(e);
      }
    }
  }

  private showTrace(logid: string, trace: Trace): void {
    this.traceRows.replaceChildren(...trace.events.map((e) => h("tr", {
      testid: "trace-row", attrs: { "data-node": String(e.node) },
    },
    h("td", { text: utc(e.ts_ms) }),
    h("td", { text: String(e.node) }),
    h("td", { className: "event", text: e.event }),
    h("td", { text: e.msgid ?? "–" }),
    h("td", { text: e.uid ?? "–" }),
    h("td", { text: e.appcode === null ? "–" : String(e.appcode) }))));
    show(this.traceTable, trace.events.length > 0);
    const notes = [trace.events.length === 0
      ? `No event about ${logid} (the nodes keep their recent events only, and only those of your key's user system are shown).`
      : `${trace.events.length} events about ${logid}, oldest first.`];
    if (trace.missing_nodes.length > 0) {
      notes.push(`Nodes ${trace.missing_nodes.join(", ")} did not answer: their events are missing.`);
    }
    if (trace.untraced_nodes.length > 0) {
      notes.push(`Nodes ${trace.untraced_nodes.join(", ")} keep no trace ([log] trace_buffer = 0).`);
    }
    if (trace.truncated) {
      notes.push("A node had more events than it answers: only its oldest are shown.");
    }
    this.traceNotes.textContent = notes.join(" ");
  }
}

function head(names: string[], numeric: number[] = []): HTMLTableSectionElement {
  return h("thead", {}, h("tr", {}, ...names.map((name, i) =>
    h("th", { text: name, className: numeric.includes(i) ? "num" : undefined }))));
}

function tile(label: string, value: HTMLElement): HTMLElement {
  return h("div", { className: "tile" }, h("span", { className: "muted", text: label }), value);
}
