// The "Drivers" panel: the online drivers of an app near a centre
// (GET /v1/nearby, the nearest 100 at most), plotted on a tile-free SVG map
// that fits itself to them, with a table of the same drivers. The form
// chooses the app, the centre and the radius (the demo's by default). Its
// errors (a 400 for a bad value or an app the node does not have, a 403 for
// an app outside the key's user system) stay in the panel and stop its
// refreshes until the form asks again (a deployment without the demo apps
// is not asked the same wrong question every 3 s); the dashboard's own
// polls report the node's other troubles. A form the panel itself refuses
// (a radius of 0) keeps its error until a valid form is sent; meanwhile the
// map goes on with the query before it, and its caption says so.

import { h, show } from "@shared/dom";

import { Api, ApiError } from "./api";
import { duration } from "./format";
import { fitBounds, type LatLon, makeView, scaleBar, type View } from "./geometry";

export interface NearbyDriver {
  uid: number;
  distance_m: number;
  lat: number;
  lon: number;
  updated_ms: number;
}

export interface Nearby {
  drivers: NearbyDriver[];
}

export interface MapQuery {
  appcode: number;
  lat: number;
  lon: number;
  radius_m: number;
}

/** The demo: the driver app around People's Square, Shanghai (msgctl drivers' default). */
export const DEMO_QUERY: MapQuery = { appcode: 1002, lat: 31.2304, lon: 121.4737, radius_m: 3000 };
/** Answers to a query that asking again would not change. */
const REFUSALS = [400, 403, 404];
/** What GET /v1/nearby answers at most. */
export const NEARBY_LIMIT = 100;
export const RADIUS_MAX_M = 50_000;
const MAX_LAT = 85.05112878;
/** The map's box, in SVG units (it scales to the panel's width). */
export const MAP_WIDTH = 960;
export const MAP_HEIGHT = 480;
const SVG = "http://www.w3.org/2000/svg";

/** The path of the query (limit: the most the node answers). */
export function nearbyPath(q: MapQuery): string {
  const params = new URLSearchParams({
    appcode: String(q.appcode), lat: String(q.lat), lon: String(q.lon), radius_m: String(q.radius_m),
    limit: String(NEARBY_LIMIT),
  });
  return `/v1/nearby?${params.toString()}`;
}

/** The query in the form's fields, or why not (the node's own limits). */
export function parseQuery(appcode: string, lat: string, lon: string, radius: string): MapQuery | string {
  const number = (text: string) => (/^\s*[+-]?(\d+\.?\d*|\.\d+)\s*$/.test(text) ? Number(text) : NaN);
  const a = number(appcode);
  if (!Number.isInteger(a) || a < 0 || a > 0xffffffff) {
    return "The app code is an integer from 0 to 4294967295.";
  }
  const la = number(lat);
  const lo = number(lon);
  if (!(Math.abs(la) <= MAX_LAT) || !(Math.abs(lo) <= 180)) {
    return `The centre is a latitude within ±${MAX_LAT} and a longitude within ±180.`;
  }
  const r = number(radius);
  if (!(r > 0 && r <= RADIUS_MAX_M)) {
    return `The radius is more than 0 and at most ${RADIUS_MAX_M.toLocaleString("en")} metres.`;
  }
  return { appcode: a, lat: la, lon: lo, radius_m: r };
}

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number>,
  testid?: string): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    el.setAttribute(name, String(value));
  }
  if (testid) {
    el.setAttribute("data-testid", testid);
  }
  return el;
}

const fixed = (v: number) => v.toFixed(1);

/** The map's drawing: the search circle, the centre, each driver, a scale bar. */
export function drawMap(root: SVGSVGElement, query: MapQuery, drivers: NearbyDriver[]): View {
  const centre: LatLon = { lat: query.lat, lon: query.lon };
  const view = makeView(fitBounds(drivers, centre), MAP_WIDTH, MAP_HEIGHT);
  const c = view.project(centre);
  const ring = svg("circle", { cx: fixed(c.x), cy: fixed(c.y), r: fixed(query.radius_m / view.metresPerPixel),
    class: "search-circle" }, "map-circle");
  const cross = svg("g", { class: "centre" }, "map-centre");
  cross.append(
    svg("line", { x1: fixed(c.x - 8), y1: fixed(c.y), x2: fixed(c.x + 8), y2: fixed(c.y) }),
    svg("line", { x1: fixed(c.x), y1: fixed(c.y - 8), x2: fixed(c.x), y2: fixed(c.y + 8) }));
  const markers = drivers.map((d) => {
    const p = view.project(d);
    const g = svg("g", { class: "driver", "data-uid": String(d.uid) }, "driver-marker");
    const dot = svg("circle", { cx: fixed(p.x), cy: fixed(p.y), r: 6 });
    const title = svg("title", {});
    title.textContent = `driver ${d.uid}: ${Math.round(d.distance_m)} m from the centre`;
    dot.append(title);
    const label = svg("text", { x: fixed(p.x + 9), y: fixed(p.y + 4) });
    label.textContent = String(d.uid);
    g.append(dot, label);
    return g;
  });
  const bar = scaleBar(view.metresPerPixel, MAP_WIDTH / 5);
  const scale = svg("g", { class: "scale" }, "map-scale");
  const y = MAP_HEIGHT - 16;
  scale.append(svg("line", { x1: 16, y1: y, x2: fixed(16 + bar.pixels), y2: y }));
  const label = svg("text", { x: 16, y: y - 6 });
  label.textContent = bar.label;
  scale.append(label);
  const background = svg("rect", { x: 0, y: 0, width: MAP_WIDTH, height: MAP_HEIGHT, class: "ground" });
  root.replaceChildren(background, ring, cross, ...markers, scale);
  return view;
}

export class DriverMap {
  readonly root: HTMLElement;
  private query: MapQuery = DEMO_QUERY;
  private busy = false;
  /** The node refused the query: not asked again until the form is sent. */
  private refused = false;
  /** Why the form's values are no query (until a valid form is sent). */
  private formError = "";
  /** Why the last read of the query failed ("" once one succeeds). */
  private readError = "";
  /** What the map shows: the query's drivers (null: its read failed). */
  private shown: { query: MapQuery; drivers: NearbyDriver[] | null } | null = null;
  private readonly appcode: HTMLInputElement;
  private readonly lat: HTMLInputElement;
  private readonly lon: HTMLInputElement;
  private readonly radius: HTMLInputElement;
  private readonly error: HTMLElement;
  private readonly caption: HTMLElement;
  private readonly map: SVGSVGElement;
  private readonly rows: HTMLTableSectionElement;
  private api: Api | null = null;

  constructor(private readonly now: () => number) {
    const field = (testid: string, label: string, value: number, width: string) => h("input", {
      testid, className: width,
      attrs: { type: "text", inputmode: "decimal", autocomplete: "off", spellcheck: "false",
        "aria-label": label, title: label, value: String(value) },
    });
    this.appcode = field("map-appcode", "app code", DEMO_QUERY.appcode, "narrow");
    this.lat = field("map-lat", "centre latitude", DEMO_QUERY.lat, "coord");
    this.lon = field("map-lon", "centre longitude", DEMO_QUERY.lon, "coord");
    this.radius = field("map-radius", "radius in metres", DEMO_QUERY.radius_m, "narrow");
    this.error = h("p", { className: "error", testid: "map-error", attrs: { role: "alert" } });
    show(this.error, false);
    this.caption = h("p", { className: "muted", testid: "map-caption" });
    this.map = svg("svg", { viewBox: `0 0 ${MAP_WIDTH} ${MAP_HEIGHT}`, role: "img",
      "aria-label": "online drivers around the centre", class: "map" }, "driver-map");
    this.rows = h("tbody", { testid: "map-drivers" });
    const label = (text: string, input: HTMLInputElement) => h("label", {}, text, " ", input);
    this.root = h("section", { testid: "drivers-panel" },
      h("h2", { text: "Drivers" }),
      h("p", { className: "muted", text: `Online drivers nearest the centre (GET /v1/nearby, at most ${NEARBY_LIMIT}), from the positions they report on a geo route; every few seconds. A plain plot, north up, no map tiles.` }),
      h("form", { className: "row map-form", testid: "map-form", on: { submit: (e) => this.onSubmit(e) } },
        label("app", this.appcode), label("lat", this.lat), label("lon", this.lon),
        label("radius m", this.radius),
        h("button", { testid: "map-submit", text: "Show", attrs: { type: "submit" } })),
      this.error, this.caption, this.map,
      h("table", { className: "grid", testid: "map-table" },
        h("thead", {}, h("tr", {}, ...["uid", "distance", "position", "last report"].map((name, i) =>
          h("th", { text: name, className: i === 1 ? "num" : undefined })))),
        this.rows));
    drawMap(this.map, this.query, []);
  }

  /** Ask with this key from now on (null: stop asking). */
  use(api: Api | null): void {
    this.api = api;
    this.refused = false; // another key may be let in
  }

  private onSubmit(event: Event): void {
    event.preventDefault();
    const q = parseQuery(this.appcode.value, this.lat.value, this.lon.value, this.radius.value);
    if (typeof q === "string") {
      // The map keeps the query before; the error stays until a valid form.
      this.formError = q;
      this.showError();
      this.caption.textContent = this.captionText();
      return;
    }
    this.query = q;
    this.refused = false;
    this.formError = "";
    this.readError = "";
    this.showError();
    void this.refresh();
  }

  private showError(): void {
    const text = [this.formError, this.readError].filter((t) => t !== "").join(" ");
    this.error.textContent = text;
    show(this.error, text !== "");
  }

  /** One round: ask, then draw (a round still in flight is not doubled). */
  async refresh(): Promise<void> {
    const api = this.api;
    if (api === null || this.busy || this.refused) {
      return;
    }
    this.busy = true;
    const query = this.query;
    try {
      const answer = await api.get<Nearby>(nearbyPath(query));
      if (api !== this.api || query !== this.query) {
        return; // signed out or asked for something else meanwhile
      }
      this.readError = "";
      this.showError();
      this.show(query, answer.drivers);
    } catch (e) {
      if (api === this.api && query === this.query) {
        this.refused = e instanceof ApiError && REFUSALS.includes(e.status);
        const again = this.refused ? " Change the query and press Show." : "";
        this.readError = e instanceof ApiError ? `The node answered ${e.status}: ${e.message}.${again}`
          : `The drivers could not be read: ${e instanceof Error ? e.message : String(e)}`;
        this.showError();
        this.show(query, null);
      }
    } finally {
      this.busy = false;
    }
  }

  /** The caption of what is shown: no count for a failed read, and a word
   * that it is the query before when the form's values are refused. */
  private captionText(): string {
    if (this.shown === null) {
      return "";
    }
    const { query, drivers } = this.shown;
    const where = `app ${query.appcode} within ${query.radius_m.toLocaleString("en")} m of ${query.lat}, ${query.lon}`;
    let text: string;
    if (drivers === null) {
      text = this.refused ? `No drivers shown: the node refused the query for ${where}.`
        : `No drivers shown: those of ${where} could not be read.`;
    } else {
      const more = drivers.length >= NEARBY_LIMIT ? ` (the nearest ${NEARBY_LIMIT}; there may be more)` : "";
      text = `${drivers.length} driver${drivers.length === 1 ? "" : "s"} online on ${where}${more}.`;
    }
    return this.formError === "" ? text : `Still showing the last valid query: ${text}`;
  }

  private show(query: MapQuery, found: NearbyDriver[] | null): void {
    const drivers = found ?? [];
    drawMap(this.map, query, drivers);
    const now = this.now();
    this.shown = { query, drivers: found };
    this.caption.textContent = this.captionText();
    this.rows.replaceChildren(...drivers.map((d) => h("tr", { testid: "map-driver-row", attrs: { "data-uid": String(d.uid) } },
      h("td", { text: String(d.uid) }),
      h("td", { className: "num", text: `${Math.round(d.distance_m).toLocaleString("en")} m` }),
      h("td", { text: `${d.lat.toFixed(5)}, ${d.lon.toFixed(5)}` }),
      h("td", { text: `${duration(Math.max(0, now - d.updated_ms))} ago` }))));
  }
}
