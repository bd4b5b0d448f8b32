// The rolling window of statistics and the series the charts draw.
import { describe, expect, it } from "vitest";
import { ALL, MAX_ROUTES, routeKey, routeLabel, StatsHistory } from "../src/series";
import type { Kind, Route, Stats } from "../src/types";

const T0 = 1_796_000_000_000;

function route(appcode: number, msgtype: number, kind: Kind, accepted: number, acked: number, p50: number | null = null): Route {
  return {
    appcode, msgtype, kind, accepted, acked, pushed: 0, repushed: 0, stored: 0, pulled: 0,
    ack_latency: { count: acked, mean_ms: null, p50_ms: p50, p90_ms: p50 === null ? null : p50 * 2, p99_ms: null },
  };
}

function stats(routes: Route[], rate: number | null = null): Stats {
  return {
    totals: {}, by_route: routes, delivery_rate: rate, delivery_rate_total: null, window_s: 300,
    ack_latency: { count: 0, mean_ms: null, p50_ms: 5, p90_ms: 10, p99_ms: 25 },
  };
}

describe("StatsHistory", () => {
  it("keeps the last ten minutes", () => {
    const history = new StatsHistory();
    for (let s = 0; s <= 700; s += 100) {
      history.add(T0 + s * 1000, stats([]));
    }
    expect(history.samples.map((x) => (x.t - T0) / 1000)).toEqual([100, 200, 300, 400, 500, 600, 700]);
  });

  it("starts again when the clock goes back", () => {
    const history = new StatsHistory();
    history.add(T0, stats([]));
    history.add(T0 - 5000, stats([]));
    expect(history.samples.length).toBe(1);
  });

  it("rates a route over the last minute, from its counter deltas", () => {
    const history = new StatsHistory();
    history.add(T0, stats([route(1001, 5, "C2C", 100, 90)], 0.9));
    history.add(T0 + 30_000, stats([route(1001, 5, "C2C", 110, 99)], 0.9));
    history.add(T0 + 60_000, stats([route(1001, 5, "C2C", 120, 110)], 0.92));
    history.add(T0 + 90_000, stats([route(1001, 5, "C2C", 120, 110)], 0.92));
    const plot = history.delivery();
    expect(plot.xs).toEqual([T0 / 1000, T0 / 1000 + 30, T0 / 1000 + 60, T0 / 1000 + 90]);
    expect(plot.series.map((s) => s.key)).toEqual([ALL, "1001/5/C2C"]);
    expect(plot.series[0].values).toEqual([0.9, 0.9, 0.92, 0.92]);
    // nothing to compare with; 9/10; 20/20 over the minute; since 30 s: 11 ACKed of 10
    // accepted (an ACK of a message accepted before)
    expect(plot.series[1].values).toEqual([null, 0.9, 1, 1.1]);
    history.add(T0 + 160_000, stats([route(1001, 5, "C2C", 120, 110)], 0.92));
    expect(history.delivery().series[1].values[4]).toBeNull(); // nothing new accepted
  });

  it("a route that appears counts from zero; counters that went back are no rate", () => {
    const history = new StatsHistory();
    history.add(T0, stats([]));
    history.add(T0 + 3000, stats([route(1001, 5, "S2C", 4, 2)]));
    history.add(T0 + 6000, stats([route(1001, 5, "S2C", 1, 0)]));
    expect(history.delivery().series[1].values).toEqual([null, 0.5, null]);
  });

  it("draws the busiest delivery routes, not C2S", () => {
    const history = new StatsHistory();
    const routes = [route(1001, 1, "C2S", 1000, 0)];
    for (let i = 0; i < MAX_ROUTES + 2; i += 1) {
      routes.push(route(1001, i, "C2C", i * 10, 0));
    }
    history.add(T0, stats(routes));
    const keys = history.delivery().series.map((s) => s.key);
    expect(keys.length).toBe(MAX_ROUTES + 1);
    expect(keys[1]).toBe(`1001/${MAX_ROUTES + 1}/C2C`);
    expect(keys).not.toContain("1001/1/C2S");
    expect(history.allRoutes().map(routeKey)).toContain("1001/1/C2S");
  });

  it("plots the latency quantiles of all routes or of one", () => {
    const history = new StatsHistory();
    history.add(T0, stats([route(1002, 7, "C2C", 1, 1, 20)]));
    history.add(T0 + 3000, stats([]));
    expect(history.latency().series.map((s) => s.values)).toEqual([[5, 5], [10, 10], [25, 25]]);
    expect(history.latency("1002/7/C2C").series.map((s) => s.values)).toEqual([[20, null], [40, null], [null, null]]);
  });

  it("labels routes", () => {
    expect(routeLabel({ appcode: 1001, msgtype: 5, kind: "C2C" })).toBe("C2C app 1001 type 5");
    expect(routeLabel({ appcode: 1001, msgtype: -1, kind: "S2C" })).toBe("S2C app 1001 other types");
  });
});
