// The dashboard in happy-dom over a fake API: the key form, the nodes, the
// totals, the charts' data, the trace, and the errors (401, 503, unreachable).
import { afterEach, describe, expect, it } from "vitest";
import { Dashboard, type Deps, POLL_MS } from "../src/app";
import type { ChartSpec, LineChart } from "../src/charts";
import type { Plot } from "../src/series";
import type { Nodes, Stats, Trace } from "../src/types";

const NOW = 1_796_000_000_000;
const flush = () => new Promise((resolve) => setTimeout(resolve, 0));

const NODES: Nodes = {
  nodes: [
    { node_id: 0, gate: "10.0.0.1:7000", connections: 3, sessions: 2, since_ms: NOW - 3_600_000 },
    { node_id: 1, gate: null, connections: 4, sessions: 4, since_ms: NOW - 60_000 },
  ],
};

function stats(accepted: number, acked: number): Stats {
  return {
    totals: { accepted, acked },
    by_route: [{ appcode: 1001, msgtype: 5, kind: "C2C", accepted, acked, pushed: 0, repushed: 0, stored: 0,
      pulled: 0, ack_latency: { count: acked, mean_ms: 4, p50_ms: 5, p90_ms: 10, p99_ms: 50 } }],
    ack_latency: { count: acked, mean_ms: 4, p50_ms: 5, p90_ms: 10, p99_ms: 50 },
    delivery_rate: 0.5, delivery_rate_total: 0.5, window_s: 300,
  };
}

type Answer = { status: number; body: unknown } | Error;

class FakeApi {
  readonly requests: { path: string; auth: string }[] = [];
  answers = new Map<string, Answer>();

  fetch = async (input: string, init: RequestInit): Promise<Response> => {
    this.requests.push({ path: input, auth: (init.headers as Record<string, string>).Authorization });
    const answer = this.answers.get(input) ?? { status: 404, body: { error: "not found" } };
    if (answer instanceof Error) {
      throw answer;
    }
    return new Response(JSON.stringify(answer.body), { status: answer.status });
  };
}

class FakeChart implements LineChart {
  plots: Plot[] = [];
  constructor(readonly host: HTMLElement, readonly spec: ChartSpec) {}
  update(plot: Plot): void {
    this.plots.push(plot);
  }
  resize(): void {}
  destroy(): void {}
}

function memoryStorage(): Storage {
  const items = new Map<string, string>();
  return {
    get length() { return items.size; },
    clear: () => items.clear(),
    getItem: (k) => items.get(k) ?? null,
    key: (i) => [...items.keys()][i] ?? null,
    removeItem: (k) => { items.delete(k); },
    setItem: (k, v) => { items.set(k, String(v)); },
  };
}

let dashboard: Dashboard | null = null;
afterEach(() => {
  dashboard?.stop();
  dashboard?.root.remove();
  dashboard = null;
});

function mount(storage = memoryStorage()) {
  const api = new FakeApi();
  api.answers.set("/v1/nodes", { status: 200, body: NODES });
  api.answers.set("/v1/stats", { status: 200, body: stats(10, 5) });
  const charts: FakeChart[] = [];
  const timers: (() => void)[] = [];
  let now = NOW;
  const deps: Deps = {
    fetch: api.fetch,
    storage,
    now: () => now,
    setInterval: (fn) => timers.push(fn),
    clearInterval: (id) => { timers[id - 1] = () => {}; },
    chart: (host, spec) => {
      const chart = new FakeChart(host, spec);
      charts.push(chart);
      return chart;
    },
  };
  dashboard = new Dashboard(deps);
  document.body.append(dashboard.root);
  const tick = async (ms = POLL_MS) => {
    now += ms;
    timers.forEach((fn) => fn());
    await flush();
  };
  return { api, charts, storage, tick };
}

function $(testid: string): HTMLElement {
  const el = document.querySelector<HTMLElement>(`[data-testid="${testid}"]`);
  if (!el) {
    throw new Error(`no ${testid}`);
  }
  return el;
}

function $$(testid: string): HTMLElement[] {
  return [...document.querySelectorAll<HTMLElement>(`[data-testid="${testid}"]`)];
}

async function signIn(key = "key-1001") {
  ($("api-key-input") as HTMLInputElement).value = key;
  $("api-key-submit").click();
  await flush();
}

describe("the dashboard", () => {
  it("asks for a key, keeps it in sessionStorage only, and sends it as a Bearer token", async () => {
    const { api, storage } = mount();
    dashboard!.start();
    expect($("api-key-form").hidden).toBe(false);
    expect($("dashboard").hidden).toBe(true);
    expect(api.requests).toEqual([]);
    await signIn();
    expect(storage.getItem("msgplatform-ops-api-key")).toBe("key-1001");
    expect(($("api-key-input") as HTMLInputElement).value).toBe("");
    expect($("api-key-form").hidden).toBe(true);
    expect(api.requests.map((r) => [r.path, r.auth])).toEqual([
      ["/v1/nearby?appcode=1002&lat=31.2304&lon=121.4737&radius_m=3000&limit=100", "Bearer key-1001"],
      ["/v1/nodes", "Bearer key-1001"], ["/v1/stats", "Bearer key-1001"]]);
  });

  it("starts with the key of this tab", async () => {
    const storage = memoryStorage();
    storage.setItem("msgplatform-ops-api-key", "kept");
    const { api } = mount(storage);
    dashboard!.start();
    await flush();
    expect($("dashboard").hidden).toBe(false);
    expect(api.requests[0].auth).toBe("Bearer kept");
  });

  it("shows the nodes and the online totals", async () => {
    mount();
    dashboard!.start();
    await signIn();
    const rows = $$("node-row");
    expect(rows.map((r) => r.dataset.nodeId)).toEqual(["0", "1"]);
    expect([...rows[0].children].map((c) => c.textContent)).toEqual([
      "0", "10.0.0.1:7000", "3", "2", "2026-11-29 23:53:20Z (1h 0m)"]);
    expect(rows[1].children[1].textContent).toContain("no gate");
    expect($("total-nodes").textContent).toBe("2");
    expect($("total-connections").textContent).toBe("7");
    expect($("total-sessions").textContent).toBe("6");
    expect($("total-delivery-rate").textContent).toBe("50.0%");
    expect($("total-latency").textContent).toBe("5 / 10 / 50 ms");
  });

  it("polls and feeds the charts a rolling window", async () => {
    const { api, charts, tick } = mount();
    dashboard!.start();
    await signIn();
    api.answers.set("/v1/stats", { status: 200, body: stats(20, 14) });
    await tick();
    const [delivery, latency] = charts;
    expect(delivery.host.dataset.testid).toBe("chart-delivery");
    expect(latency.host.dataset.testid).toBe("chart-latency");
    const plot = delivery.plots[delivery.plots.length - 1];
    expect(plot.xs).toEqual([NOW / 1000, (NOW + POLL_MS) / 1000]);
    expect(plot.series[1].values).toEqual([null, 0.9]);
    expect(latency.plots[latency.plots.length - 1].series.map((s) => s.values[1])).toEqual([5, 10, 50]);
    // The latency chart follows the route chosen.
    const select = $("latency-route") as HTMLSelectElement;
    expect([...select.options].map((o) => o.value)).toEqual(["all", "1001/5/C2C"]);
  });

  it("asks for the key again when the node refuses it (401)", async () => {
    const { api, storage, tick } = mount();
    dashboard!.start();
    await signIn("wrong");
    api.answers.set("/v1/nodes", { status: 401, body: { error: "unknown API key" } });
    await tick();
    expect($("api-key-form").hidden).toBe(false);
    expect($("dashboard").hidden).toBe(true);
    expect($("api-key-error").textContent).toContain("unknown API key");
    expect(storage.getItem("msgplatform-ops-api-key")).toBeNull();
    const count = api.requests.length;
    await tick();
    expect(api.requests.length).toBe(count); // no more polling
  });

  it("shows a banner while a backend is down (503) or the node does not answer, and clears it", async () => {
    const { api, tick } = mount();
    dashboard!.start();
    await signIn();
    expect($("error-banner").hidden).toBe(true);
    api.answers.set("/v1/stats", { status: 503, body: { error: "a backend is unavailable" } });
    await tick();
    expect($("error-banner").hidden).toBe(false);
    expect($("error-banner").textContent).toContain("503: a backend is unavailable");
    api.answers.set("/v1/stats", new TypeError("Failed to fetch"));
    await tick();
    expect($("error-banner").textContent).toContain("does not answer");
    api.answers.set("/v1/stats", { status: 200, body: stats(1, 1) });
    await tick();
    expect($("error-banner").hidden).toBe(true);
  });

  it("forgets the key on request", async () => {
    const { storage } = mount();
    dashboard!.start();
    await signIn();
    $("api-key-forget").click();
    expect(storage.getItem("msgplatform-ops-api-key")).toBeNull();
    expect($("api-key-form").hidden).toBe(false);
  });
});

describe("the trace", () => {
  const TRACE: Trace = {
    events: [
      { ts_ms: NOW, node: 0, event: "C2C 77 stored for 2@1001", msgid: "77", uid: "1", appcode: 1001 },
      { ts_ms: NOW + 5, node: 1, event: '<img src=x onerror="alert(1)"> pushed', msgid: "77", uid: "2", appcode: 1001 },
      { ts_ms: NOW + 9, node: 1, event: "bus", msgid: null, uid: null, appcode: null },
    ],
    missing_nodes: [2], untraced_nodes: [3], truncated: false,
  };

  async function trace(logid: string) {
    ($("trace-input") as HTMLInputElement).value = logid;
    $("trace-submit").click();
    await flush();
  }

  it("shows the message's path as text, with the nodes that are missing", async () => {
    const { api } = mount();
    dashboard!.start();
    await signIn();
    api.answers.set("/v1/trace/order%2F7", { status: 200, body: TRACE });
    await trace(" order/7 ");
    const rows = $$("trace-row");
    expect(rows.map((r) => r.dataset.node)).toEqual(["0", "1", "1"]);
    expect([...rows[0].children].map((c) => c.textContent)).toEqual([
      "2026-11-30 00:53:20.000Z", "0", "C2C 77 stored for 2@1001", "77", "1", "1001"]);
    expect(rows[1].children[2].textContent).toBe('<img src=x onerror="alert(1)"> pushed');
    expect(document.querySelector("img")).toBeNull();
    expect([...rows[2].children].slice(3).map((c) => c.textContent)).toEqual(["–", "–", "–"]);
    expect($("trace-notes").textContent).toContain("Nodes 2 did not answer");
    expect($("trace-notes").textContent).toContain("Nodes 3 keep no trace");
  });

  it("checks the logid before asking, and shows the node's 400", async () => {
    const { api } = mount();
    dashboard!.start();
    await signIn();
    const count = api.requests.length;
    await trace("é");
    expect($("trace-error").hidden).toBe(false);
    expect(api.requests.length).toBe(count);
    api.answers.set("/v1/trace/x", { status: 400, body: { error: "logid: expected 1 to 128 printable ASCII characters" } });
    await trace("x");
    expect($("trace-error").textContent).toContain("printable ASCII");
    expect($$("trace-row")).toEqual([]);
  });

  it("says when nothing is known", async () => {
    const { api } = mount();
    dashboard!.start();
    await signIn();
    api.answers.set("/v1/trace/none", { status: 200, body: { events: [], missing_nodes: [], untraced_nodes: [], truncated: false } });
    await trace("none");
    expect($("trace-table").hidden).toBe(true);
    expect($("trace-notes").textContent).toContain("No event about none");
  });
});
