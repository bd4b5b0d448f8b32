// How times and durations are shown.

/** ``2026-11-26 15:31:27.123Z`` (UTC). */
export function utc(ms: number, withMs = true): string {
  const text = new Date(ms).toISOString().replace("T", " ");
  return withMs ? text : `${text.slice(0, 19)}Z`;
}

/** ``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``. */
export function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

export function percent(value: number | null | undefined): string {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`;
}
