// Line charts over time with uPlot (canvas). A chart is made again when its
// series change (a new route appears); otherwise only its data is replaced.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

import type { Plot } from "./series";

export interface LineChart {
  update(plot: Plot): void;
  resize(): void;
  destroy(): void;
}

export interface ChartSpec {
  /** The y axis's label. */
  unit: string;
  /** How a y value is shown (axis, legend). */
  format: (value: number) => string;
  /** The lowest top of the y scale (e.g. 1 for a rate). */
  minMax?: number;
}

export type ChartFactory = (host: HTMLElement, spec: ChartSpec) => LineChart;

const COLORS = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777",
  "#65a30d", "#475569"];
const HEIGHT = 220;

class UPlotChart implements LineChart {
  private plot: uPlot | null = null;
  private keys = "";

  constructor(private readonly host: HTMLElement, private readonly spec: ChartSpec) {}

  update(plot: Plot): void {
    const keys = plot.series.map((s) => s.key).join("\n");
    const data: uPlot.AlignedData = [plot.xs, ...plot.series.map((s) => s.values)];
    if (this.plot !== null && keys === this.keys) {
      this.plot.setData(data);
      return;
    }
    this.destroy();
    this.keys = keys;
    const { format, minMax, unit } = this.spec;
    const options: uPlot.Options = {
      width: this.width(),
      height: HEIGHT,
      scales: {
        x: { time: true },
        y: { range: (_u, lo, hi) => [Math.min(0, lo ?? 0), Math.max(minMax ?? 0, hi ?? 0) || 1] },
      },
      series: [
        { label: "time (UTC)", value: (_u, v) => (v === null ? "–" : new Date(v * 1000).toISOString().slice(11, 19)) },
        ...plot.series.map((s, i) => ({
          label: s.label,
          stroke: COLORS[i % COLORS.length],
          width: i === 0 ? 2 : 1.5,
          spanGaps: false,
          value: (_u: uPlot, v: number | null) => (v === null ? "–" : format(v)),
        })),
      ],
      axes: [{}, { label: unit, size: 60, values: (_u, values) => values.map((v) => format(v)) }],
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
    };
    this.plot = new uPlot(options, data, this.host);
  }

  resize(): void {
    this.plot?.setSize({ width: this.width(), height: HEIGHT });
  }

  destroy(): void {
    this.plot?.destroy();
    this.plot = null;
  }

  private width(): number {
    return Math.max(300, this.host.clientWidth || 600);
  }
}

export const uplotChart: ChartFactory = (host, spec) => new UPlotChart(host, spec);
