// The drivers map's geometry: the bounds that fit a set of positions, a
// projection of those bounds into a box of pixels, and a scale bar. The map
// has no tiles: it is a plain equirectangular plot (longitudes shrunk by the
// cosine of the middle latitude, so a metre is as long east-west as
// north-south near the centre), which is exact enough for a city.

export interface LatLon {
  lat: number;
  lon: number;
}

export interface Bounds {
  south: number;
  north: number;
  west: number;
  east: number;
}

export interface Point {
  x: number;
  y: number;
}

/** Metres in a degree of latitude, on the sphere the node measures with (Redis GEO's). */
export const METRES_PER_DEGREE = (6372797.560856 * Math.PI) / 180;

/** The bounds shown when there is nothing else: this square around the centre. */
export const MIN_SPAN_M = 400;

function lonMetres(lat: number): number {
  return METRES_PER_DEGREE * Math.max(Math.cos((lat * Math.PI) / 180), 1e-6);
}

/**
 * The bounds of ``points`` and ``centre``, widened to at least ``minSpanM``
 * metres each way (one driver alone is not a whole map) and padded by
 * ``pad`` of their span on every side (markers are not cut at the edge).
 */
export function fitBounds(points: LatLon[], centre: LatLon, minSpanM = MIN_SPAN_M, pad = 0.08): Bounds {
  let south = centre.lat;
  let north = centre.lat;
  let west = centre.lon;
  let east = centre.lon;
  for (const p of points) {
    south = Math.min(south, p.lat);
    north = Math.max(north, p.lat);
    west = Math.min(west, p.lon);
    east = Math.max(east, p.lon);
  }
  const midLat = (south + north) / 2;
  const minLat = minSpanM / METRES_PER_DEGREE;
  const minLon = minSpanM / lonMetres(midLat);
  if (north - south < minLat) {
    const mid = (south + north) / 2;
    south = mid - minLat / 2;
    north = mid + minLat / 2;
  }
  if (east - west < minLon) {
    const mid = (west + east) / 2;
    west = mid - minLon / 2;
    east = mid + minLon / 2;
  }
  const padLat = (north - south) * pad;
  const padLon = (east - west) * pad;
  return { south: south - padLat, north: north + padLat, west: west - padLon, east: east + padLon };
}

export interface View {
  readonly width: number;
  readonly height: number;
  /** Metres one pixel stands for (the same both ways). */
  readonly metresPerPixel: number;
  project(p: LatLon): Point;
}

/**
 * A projection of ``bounds`` into a ``width`` x ``height`` box: one scale for
 * both axes (the bounds fill one dimension and are centred in the other),
 * north up.
 */
export function makeView(bounds: Bounds, width: number, height: number): View {
  const midLat = (bounds.south + bounds.north) / 2;
  const midLon = (bounds.west + bounds.east) / 2;
  const perLon = lonMetres(midLat);
  const wideM = Math.max((bounds.east - bounds.west) * perLon, 1e-9);
  const highM = Math.max((bounds.north - bounds.south) * METRES_PER_DEGREE, 1e-9);
  const metresPerPixel = Math.max(wideM / width, highM / height);
  return {
    width,
    height,
    metresPerPixel,
    project(p: LatLon): Point {
      const east = (p.lon - midLon) * perLon;
      const north = (p.lat - midLat) * METRES_PER_DEGREE;
      return { x: width / 2 + east / metresPerPixel, y: height / 2 - north / metresPerPixel };
    },
  };
}

export interface ScaleBar {
  metres: number;
  pixels: number;
  label: string;
}

/** The longest round length (1, 2 or 5 times a power of ten metres) that fits in ``maxPixels``. */
export function scaleBar(metresPerPixel: number, maxPixels: number): ScaleBar {
  const most = metresPerPixel * maxPixels;
  let metres = 1;
  for (let power = 1; power <= 1e7; power *= 10) {
    for (const step of [1, 2, 5]) {
      if (step * power <= most) {
        metres = step * power;
      }
    }
  }
  const label = metres >= 1000 ? `${metres / 1000} km` : `${metres} m`;
  return { metres, pixels: metres / metresPerPixel, label };
}
