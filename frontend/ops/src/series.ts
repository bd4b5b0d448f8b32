// The rolling window of /v1/stats answers kept in the page, and the series
// the charts draw from it.
//
// Delivery rate of a route at a sample: ACKed / accepted over the last
// RATE_SPAN_MS (the difference of the route's counters between that sample
// and the oldest one within the span; ACKs of messages accepted before the
// span count too, so it may pass 1); null without new accepted messages, or
// when the counters went back within the span (a node restarted). C2S routes are left out
// (the bus takes them: nothing is ACKed). ACK latency: the quantiles the node
// reports for a route (or for all routes), sample by sample.

import type { Latency, Route, Stats } from "./types";

/** How long the page keeps samples. */
export const WINDOW_MS = 10 * 60 * 1000;
/** The span of a delivery rate. */
export const RATE_SPAN_MS = 60 * 1000;
/** The most routes the delivery chart draws (the busiest). */
export const MAX_ROUTES = 8;
/** The key of the all-routes series. */
export const ALL = "all";

export interface Sample {
  /** Unix ms, the page's clock. */
  t: number;
  stats: Stats;
  /** ``stats.by_route`` by :func:`routeKey`. */
  routes: Map<string, Route>;
}

export interface Series {
  key: string;
  label: string;
  values: (number | null)[];
}

export interface Plot {
  /** Unix seconds (uPlot's time scale). */
  xs: number[];
  series: Series[];
}

export function routeKey(route: Pick<Route, "appcode" | "msgtype" | "kind">): string {
  return `${route.appcode}/${route.msgtype}/${route.kind}`;
}

export function routeLabel(route: Pick<Route, "appcode" | "msgtype" | "kind">): string {
  const msgtype = route.msgtype < 0 ? "other types" : `type ${route.msgtype}`;
  return `${route.kind} app ${route.appcode} ${msgtype}`;
}

export class StatsHistory {
  readonly samples: Sample[] = [];

  constructor(readonly windowMs: number = WINDOW_MS, readonly spanMs: number = RATE_SPAN_MS) {}

  add(t: number, stats: Stats): void {
    const last = this.samples[this.samples.length - 1];
    if (last !== undefined && t < last.t) {
      this.samples.length = 0; // the clock went back: start again
    }
    this.samples.push({ t, stats, routes: new Map(stats.by_route.map((r) => [routeKey(r), r])) });
    while (this.samples.length > 0 && this.samples[0].t < t - this.windowMs) {
      this.samples.shift();
    }
  }

  clear(): void {
    this.samples.length = 0;
  }

  /** The routes with deliveries (C2C, S2C) seen in the window, busiest first (at most ``limit``). */
  deliveryRoutes(limit: number = MAX_ROUTES): Route[] {
    const latest = new Map<string, Route>();
    for (const { stats } of this.samples) {
      for (const route of stats.by_route) {
        if (route.kind !== "C2S") {
          latest.set(routeKey(route), route);
        }
      }
    }
    return [...latest.values()]
      .sort((a, b) => b.accepted - a.accepted || routeKey(a).localeCompare(routeKey(b)))
      .slice(0, limit);
  }

  /** Every route seen in the window, by key (for the latency chart's choice). */
  allRoutes(): Route[] {
    const latest = new Map<string, Route>();
    for (const { stats } of this.samples) {
      for (const route of stats.by_route) {
        latest.set(routeKey(route), route);
      }
    }
    return [...latest.values()].sort((a, b) => routeKey(a).localeCompare(routeKey(b)));
  }

  delivery(): Plot {
    const xs = this.samples.map((s) => s.t / 1000);
    const all: Series = {
      key: ALL,
      label: "all routes (node's window)",
      values: this.samples.map((s) => s.stats.delivery_rate),
    };
    const series = this.deliveryRoutes().map((route) => {
      const key = routeKey(route);
      return { key, label: routeLabel(route), values: this.samples.map((_, i) => this.rateAt(i, key)) };
    });
    return { xs, series: [all, ...series] };
  }

  latency(key: string = ALL): Plot {
    const xs = this.samples.map((s) => s.t / 1000);
    const latencies = this.samples.map((s) => latencyOf(s, key));
    const pick = (name: "p50_ms" | "p90_ms" | "p99_ms") => latencies.map((l) => (l ? l[name] : null));
    return {
      xs,
      series: [
        { key: "p50", label: "p50 (ms)", values: pick("p50_ms") },
        { key: "p90", label: "p90 (ms)", values: pick("p90_ms") },
        { key: "p99", label: "p99 (ms)", values: pick("p99_ms") },
      ],
    };
  }

  private rateAt(i: number, key: string): number | null {
    const now = this.samples[i];
    const b = now.routes.get(key);
    if (b === undefined) {
      return null;
    }
    let a: Route | undefined;
    let compared = false;
    for (let j = i - 1; j >= 0 && this.samples[j].t >= now.t - this.spanMs; j -= 1) {
      compared = true;
      a = this.samples[j].routes.get(key); // absent: the route is new, from zero
      if (a !== undefined && (a.accepted > b.accepted || a.acked > b.acked)) {
        return null; // the counters went back
      }
    }
    if (!compared) {
      return null; // no sample within the span
    }
    const accepted = b.accepted - (a?.accepted ?? 0);
    const acked = b.acked - (a?.acked ?? 0);
    return accepted > 0 ? acked / accepted : null;
  }
}

function latencyOf(sample: Sample, key: string): Latency | undefined {
  return key === ALL ? sample.stats.ack_latency : sample.routes.get(key)?.ack_latency;
}
