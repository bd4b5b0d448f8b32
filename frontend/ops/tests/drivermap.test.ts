// The Drivers map: its geometry (fit, projection, scale bar) and the panel
// over a fake API in happy-dom (markers, table, form, errors).
import { afterEach, describe, expect, it } from "vitest";
import { Api } from "../src/api";
import { DEMO_QUERY, DriverMap, MAP_HEIGHT, MAP_WIDTH, type NearbyDriver, nearbyPath, parseQuery } from "../src/drivermap";
import { fitBounds, makeView, METRES_PER_DEGREE, MIN_SPAN_M, scaleBar } from "../src/geometry";

const CENTRE = { lat: 31.2304, lon: 121.4737 };
const COS = Math.cos((CENTRE.lat * Math.PI) / 180);
const flush = () => new Promise((resolve) => setTimeout(resolve, 0));

/** A point ``north`` and ``east`` metres from the centre. */
function at(north: number, east: number) {
  return { lat: CENTRE.lat + north / METRES_PER_DEGREE, lon: CENTRE.lon + east / (METRES_PER_DEGREE * COS) };
}

describe("fitBounds", () => {
  it("holds every point and the centre, padded", () => {
    const points = [at(1000, 0), at(-500, 2000), at(0, -300)];
    const b = fitBounds(points, CENTRE, MIN_SPAN_M, 0.1);
    for (const p of [...points, CENTRE]) {
      expect(p.lat).toBeGreaterThan(b.south);
      expect(p.lat).toBeLessThan(b.north);
      expect(p.lon).toBeGreaterThan(b.west);
      expect(p.lon).toBeLessThan(b.east);
    }
    // 1,500 m north-south plus 10% each side.
    expect((b.north - b.south) * METRES_PER_DEGREE).toBeCloseTo(1800, 0);
  });

  it("is at least the minimum span around a lone centre", () => {
    const b = fitBounds([], CENTRE, 400, 0);
    expect((b.north - b.south) * METRES_PER_DEGREE).toBeCloseTo(400, 3);
    expect(((b.east - b.west) * METRES_PER_DEGREE * COS)).toBeCloseTo(400, 0);
    expect((b.north + b.south) / 2).toBeCloseTo(CENTRE.lat, 9);
  });
});

describe("makeView", () => {
  it("keeps one scale both ways, north up, the bounds centred", () => {
    const view = makeView(fitBounds([at(1000, 1000), at(-1000, -1000)], CENTRE, 0, 0), 800, 400);
    // 2,000 m tall into 400 px: 5 m a pixel, also east-west.
    expect(view.metresPerPixel).toBeCloseTo(5, 2);
    const c = view.project(CENTRE);
    expect(c.x).toBeCloseTo(400, 1);
    expect(c.y).toBeCloseTo(200, 1);
    const ne = view.project(at(1000, 1000));
    expect(ne.y).toBeCloseTo(0, 1);
    expect(ne.x).toBeCloseTo(600, 0); // 1,000 m east at 5 m/px
    const south = view.project(at(-500, 0));
    expect(south.y).toBeCloseTo(300, 1);
  });

  it("fits wide bounds by their width", () => {
    const view = makeView(fitBounds([at(0, 4000), at(0, -4000)], CENTRE, 0, 0), 800, 400);
    expect(view.metresPerPixel).toBeCloseTo(10, 1);
    expect(view.project(at(0, -4000)).x).toBeCloseTo(0, 0);
    expect(view.project(at(0, 4000)).x).toBeCloseTo(800, 0);
  });
});

describe("scaleBar", () => {
  it("is a round length that fits", () => {
    expect(scaleBar(5, 192)).toEqual({ metres: 500, pixels: 100, label: "500 m" });
    expect(scaleBar(10, 192).label).toBe("1 km");
    expect(scaleBar(30, 192)).toMatchObject({ metres: 5000, label: "5 km" });
    expect(scaleBar(0.01, 192).metres).toBe(1);
  });
});

describe("parseQuery and nearbyPath", () => {
  it("takes the node's limits", () => {
    expect(parseQuery("1002", "31.2", "121.4", "3000")).toEqual({ appcode: 1002, lat: 31.2, lon: 121.4, radius_m: 3000 });
    expect(parseQuery("x", "31.2", "121.4", "3000")).toContain("app code");
    expect(parseQuery("1002", "86", "121.4", "3000")).toContain("latitude");
    expect(parseQuery("1002", "1", "181", "3000")).toContain("longitude");
    expect(parseQuery("1002", "1", "1", "0")).toContain("radius");
    expect(parseQuery("1002", "1", "1", "50001")).toContain("radius");
    expect(parseQuery("1002", "1e3", "1", "10")).toContain("latitude");
  });

  it("asks for the most drivers the node answers", () => {
    expect(nearbyPath(DEMO_QUERY)).toBe("/v1/nearby?appcode=1002&lat=31.2304&lon=121.4737&radius_m=3000&limit=100");
  });
});

type Answer = { status: number; body: unknown };

function panel(answers: Map<string, Answer>) {
  const paths: string[] = [];
  const fetch = async (input: string): Promise<Response> => {
    paths.push(input);
    const a = [...answers.entries()].find(([prefix]) => input.startsWith(prefix))?.[1]
      ?? { status: 404, body: { error: "not found" } };
    return new Response(JSON.stringify(a.body), { status: a.status });
  };
  const map = new DriverMap(() => 1_796_000_010_000);
  document.body.append(map.root);
  map.use(new Api("key", fetch));
  return { map, paths };
}

function driver(uid: number, north: number, east: number): NearbyDriver {
  return { uid, distance_m: Math.hypot(north, east), ...at(north, east), updated_ms: 1_796_000_005_000 };
}

let mounted: DriverMap | null = null;
afterEach(() => {
  mounted?.root.remove();
  mounted = null;
});

const $$ = (sel: string) => [...document.querySelectorAll(sel)];

describe("DriverMap", () => {
  it("plots each driver inside the map, with a table row", async () => {
    const drivers = [driver(101, 300, 0), driver(102, -800, 1200), driver(103, 50, -2000)];
    const { map, paths } = panel(new Map([["/v1/nearby", { status: 200, body: { drivers } }]]));
    mounted = map;
    await map.refresh();
    expect(paths).toEqual([nearbyPath(DEMO_QUERY)]);
    const markers = $$('[data-testid="driver-marker"]');
    expect(markers.map((m) => m.getAttribute("data-uid"))).toEqual(["101", "102", "103"]);
    for (const m of markers) {
      const dot = m.querySelector("circle")!;
      const x = Number(dot.getAttribute("cx"));
      const y = Number(dot.getAttribute("cy"));
      expect(x).toBeGreaterThan(0);
      expect(x).toBeLessThan(MAP_WIDTH);
      expect(y).toBeGreaterThan(0);
      expect(y).toBeLessThan(MAP_HEIGHT);
    }
    // 101 is north of the centre, 103 far west: above it and left of it.
    const pos = (uid: string) => {
      const dot = document.querySelector(`[data-uid="${uid}"] circle`)!;
      return { x: Number(dot.getAttribute("cx")), y: Number(dot.getAttribute("cy")) };
    };
    expect(pos("101").y).toBeLessThan(pos("102").y);
    expect(pos("103").x).toBeLessThan(pos("101").x);
    expect($$('[data-testid="map-driver-row"]').map((r) => r.textContent)).toEqual([
      expect.stringContaining("101300 m"), expect.stringContaining("1021,442 m"), expect.stringContaining("1032,001 m")]);
    expect($$('[data-testid="map-driver-row"]')[0].textContent).toContain("5s ago");
    expect(document.querySelector('[data-testid="map-caption"]')!.textContent).toBe(
      "3 drivers online on app 1002 within 3,000 m of 31.2304, 121.4737.");
    expect(document.querySelector('[data-testid="map-scale"] text')!.textContent).toMatch(/^\d+ (m|km)$/);
  });

  it("asks again with the form's values, and refuses bad ones without asking", async () => {
    const { map, paths } = panel(new Map([["/v1/nearby", { status: 200, body: { drivers: [] } }]]));
    mounted = map;
    const input = (testid: string, value: string) => {
      (document.querySelector(`[data-testid="${testid}"]`) as HTMLInputElement).value = value;
    };
    input("map-appcode", "1001");
    input("map-radius", "500");
    (document.querySelector('[data-testid="map-submit"]') as HTMLButtonElement).click();
    await flush();
    expect(paths).toEqual(["/v1/nearby?appcode=1001&lat=31.2304&lon=121.4737&radius_m=500&limit=100"]);
    expect(document.querySelector('[data-testid="map-caption"]')!.textContent).toContain("0 drivers");
    input("map-lat", "north");
    (document.querySelector('[data-testid="map-submit"]') as HTMLButtonElement).click();
    await flush();
    expect(paths.length).toBe(1);
    const error = document.querySelector('[data-testid="map-error"]') as HTMLElement;
    expect(error.hidden).toBe(false);
    expect(error.textContent).toContain("latitude");
  });

  it("keeps the form's error through the refreshes of the query before, and says it is that one", async () => {
    const { map, paths } = panel(new Map([["/v1/nearby", { status: 200, body: { drivers: [driver(7, 0, 100)] } }]]));
    mounted = map;
    await map.refresh();
    const error = document.querySelector('[data-testid="map-error"]') as HTMLElement;
    const caption = document.querySelector('[data-testid="map-caption"]')!;
    const radius = document.querySelector('[data-testid="map-radius"]') as HTMLInputElement;
    const submit = document.querySelector('[data-testid="map-submit"]') as HTMLButtonElement;
    for (const bad of ["0", "abc"]) {
      radius.value = bad;
      submit.click();
      await flush();
      await map.refresh(); // the periodic refresh, of the query before: it succeeds
      await map.refresh();
      expect(error.hidden).toBe(false);
      expect(error.textContent).toBe("The radius is more than 0 and at most 50,000 metres.");
      expect(caption.textContent).toBe(
        "Still showing the last valid query: 1 driver online on app 1002 within 3,000 m of 31.2304, 121.4737.");
    }
    expect(paths.every((p) => p === nearbyPath(DEMO_QUERY))).toBe(true);
    radius.value = "500";
    submit.click();
    await flush();
    expect(paths.at(-1)).toBe("/v1/nearby?appcode=1002&lat=31.2304&lon=121.4737&radius_m=500&limit=100");
    expect(error.hidden).toBe(true);
    expect(caption.textContent).toBe("1 driver online on app 1002 within 500 m of 31.2304, 121.4737.");
  });

  it("shows no count for a refused query, nor for one it could not read", async () => {
    const answers = new Map<string, Answer>([["/v1/nearby", { status: 400, body: { error: "appcode: no app 9999 is configured" } }]]);
    const { map } = panel(answers);
    mounted = map;
    (document.querySelector('[data-testid="map-appcode"]') as HTMLInputElement).value = "9999";
    (document.querySelector('[data-testid="map-submit"]') as HTMLButtonElement).click();
    await flush();
    const caption = document.querySelector('[data-testid="map-caption"]')!;
    expect(caption.textContent).toBe("No drivers shown: the node refused the query for app 9999 within 3,000 m of 31.2304, 121.4737.");
    answers.set("/v1/nearby", { status: 503, body: { error: "Redis is unavailable" } });
    (document.querySelector('[data-testid="map-submit"]') as HTMLButtonElement).click();
    await flush();
    expect(caption.textContent).toBe("No drivers shown: those of app 9999 within 3,000 m of 31.2304, 121.4737 could not be read.");
    expect(caption.textContent).not.toMatch(/\d drivers? online/);
  });

  it("says the node's refusal in the panel and clears the markers", async () => {
    const answers = new Map<string, Answer>([["/v1/nearby", { status: 200, body: { drivers: [driver(7, 0, 100)] } }]]);
    const { map } = panel(answers);
    mounted = map;
    await map.refresh();
    expect($$('[data-testid="driver-marker"]').length).toBe(1);
    answers.set("/v1/nearby", { status: 403, body: { error: "appcode: app 1002 is not in this API key's user system" } });
    await map.refresh();
    expect($$('[data-testid="driver-marker"]').length).toBe(0);
    const error = document.querySelector('[data-testid="map-error"]') as HTMLElement;
    expect(error.hidden).toBe(false);
    expect(error.textContent).toBe("The node answered 403: appcode: app 1002 is not in this API key's user system. Change the query and press Show.");
  });

  it("stops asking after a refusal until the form is sent again, but not after a 503", async () => {
    const answers = new Map<string, Answer>([["/v1/nearby", { status: 400, body: { error: "appcode: no app 1002 is configured" } }]]);
    const { map, paths } = panel(answers);
    mounted = map;
    await map.refresh();
    await map.refresh();
    expect(paths.length).toBe(1);
    answers.set("/v1/nearby", { status: 503, body: { error: "Redis is unavailable" } });
    (document.querySelector('[data-testid="map-submit"]') as HTMLButtonElement).click();
    await flush();
    expect(paths.length).toBe(2);
    expect(document.querySelector('[data-testid="map-error"]')!.textContent).toBe("The node answered 503: Redis is unavailable.");
    await map.refresh();
    expect(paths.length).toBe(3);
  });

  it("asks nothing without a key", async () => {
    const { map, paths } = panel(new Map());
    mounted = map;
    map.use(null);
    await map.refresh();
    expect(paths).toEqual([]);
  });
});
