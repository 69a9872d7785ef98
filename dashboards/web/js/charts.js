// Charts on the vendored uPlot (global `uPlot`, loaded by index.html): time series with optional
// vertical markers (version changes), and a bar chart (per-unit importance). A chart object keeps
// its uPlot instance across refreshes and only swaps the data, so live updates do not flicker.

import { h, replace } from "./ui.js";

export const COLORS = ["#2f6fb0", "#d9822b", "#3a9a5b", "#a23f8f", "#c23b3b", "#6b6b6b"];

function widthOf(el) {
  return Math.max(240, Math.floor(el.getBoundingClientRect().width || el.clientWidth || 600));
}

// Vertical dashed lines with a short label at each marker's x (epoch seconds).
function markerPlugin(getMarkers) {
  return {
    hooks: {
      draw: [(u) => {
        const markers = getMarkers() || [];
        if (!markers.length) return;
        const { ctx } = u;
        const { top, height, left, width } = u.bbox;
        ctx.save();
        ctx.strokeStyle = "#7a4cc2";
        ctx.fillStyle = "#7a4cc2";
        ctx.lineWidth = devicePixelRatio;
        ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
        ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
        for (const m of markers) {
          const x = Math.round(u.valToPos(m.t, "x", true));
          if (x < left || x > left + width) continue;
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
          if (m.label) ctx.fillText(m.label, x + 3 * devicePixelRatio, top + 12 * devicePixelRatio);
        }
        ctx.restore();
      }],
    },
  };
}

// Axis ticks get as many decimals as their spacing needs (87.5 / 88.0 / 88.5 %, not 88 / 88 / 88 %);
// the legend shows one decimal.
const UNITS = {
  pct: { scale: 100, suffix: " %" },
  ratio: { scale: 1, suffix: "×" },
  plain: { scale: 1, suffix: "" },
};

function tickFormatter(unit) {
  const { scale, suffix } = UNITS[unit] || UNITS.plain;
  return (u, vals) => {
    const step = vals.length > 1 ? Math.abs(vals[1] - vals[0]) * scale : 1;
    const digits = step > 0 && step < 1 ? Math.min(4, Math.ceil(-Math.log10(step) - 1e-9)) : 0;
    return vals.map((v) => (v === null ? "" : `${(v * scale).toFixed(digits)}${suffix}`));
  };
}

function valueFormatter(unit) {
  const { scale, suffix } = UNITS[unit] || UNITS.plain;
  return (v) => (v === null || v === undefined ? "—" : `${(v * scale).toFixed(1)}${suffix}`);
}

// spec: {series: [{label, points: [[t, y], ...], color?}], markers?: [{t, label}],
//        yUnit?: "pct" | "ratio" | "plain", yLabel?, yRange?: [min, max], empty?: string}
export class TimeChart {
  constructor(container, { height = 220, testid } = {}) {
    this.container = container;
    this.height = height;
    this.testid = testid;
    this.u = null;
    this.key = null;
    this.markers = [];
    this.observer = new ResizeObserver(() => {
      if (this.u) this.u.setSize({ width: widthOf(this.container), height: this.height });
    });
    this.observer.observe(container);
  }

  update(spec) {
    const series = spec.series.filter((s) => s.points && s.points.length);
    this.markers = spec.markers || [];
    // What is drawn, readable from the DOM (the plot itself is a canvas).
    this.container.dataset.markers = String(this.markers.length);
    this.container.dataset.points = series.map((s) => `${s.label}:${s.points.length}`).join(",");
    if (!series.length) {
      this.destroyPlot();
      replace(this.container, h("div", { class: "chart-empty", "data-testid": `${this.testid}-empty` }, spec.empty ||
        "No data yet."));
      return;
    }
    const tables = series.map((s) => [s.points.map((p) => p[0]), s.points.map((p) => p[1])]);
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    const key = JSON.stringify([spec.yUnit, series.map((s) => s.label)]);
    if (this.u && key === this.key) {
      this.u.setData(data);
      return;
    }
    this.destroyPlot();
    this.key = key;
    const fmt = valueFormatter(spec.yUnit);
    const opts = {
      width: widthOf(this.container),
      height: this.height,
      cursor: { drag: { x: true, y: false } },
      scales: {
        x: { time: true },
        y: spec.yRange ? { range: spec.yRange } : { auto: true },
      },
      axes: [{}, { label: spec.yLabel, values: tickFormatter(spec.yUnit), size: 64 }],
      series: [
        { value: (u, v) => (v === null ? "" : new Date(v * 1000).toISOString().slice(0, 19).replace("T", " ")) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color || COLORS[i % COLORS.length],
          width: 2,
          spanGaps: true,
          points: { show: s.points.length < 60 },
          value: (u, v) => fmt(v),
        })),
      ],
      plugins: [markerPlugin(() => this.markers)],
    };
    replace(this.container);
    this.u = new uPlot(opts, data, this.container);
    if (this.testid) this.u.root.dataset.testid = this.testid;
  }

  destroyPlot() {
    if (this.u) {
      this.u.destroy();
      this.u = null;
      this.key = null;
    }
  }

  destroy() {
    this.observer.disconnect();
    this.destroyPlot();
  }
}

// values: number[] (one bar per unit index)
export class BarChart {
  constructor(container, { height = 200, testid, label = "importance" } = {}) {
    this.container = container;
    this.height = height;
    this.testid = testid;
    this.label = label;
    this.u = null;
    this.observer = new ResizeObserver(() => {
      if (this.u) this.u.setSize({ width: widthOf(this.container), height: this.height });
    });
    this.observer.observe(container);
  }

  update(values, empty = "No data yet.") {
    if (!values || !values.length) {
      if (this.u) this.u.destroy();
      this.u = null;
      replace(this.container, h("div", { class: "chart-empty", "data-testid": `${this.testid}-empty` }, empty));
      return;
    }
    const data = [values.map((_, i) => i), values];
    if (this.u && this.u.data[0].length === values.length) {
      this.u.setData(data);
      return;
    }
    if (this.u) this.u.destroy();
    replace(this.container);
    this.u = new uPlot({
      width: widthOf(this.container),
      height: this.height,
      scales: { x: { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] }, y: { range: (u, min, max) => [0, max * 1.05 || 1] } },
      axes: [{ label: "unit" }, { size: 60 }],
      legend: { show: true },
      series: [
        { label: "unit" },
        { label: this.label, fill: "#2f6fb0aa", stroke: "#2f6fb0", paths: uPlot.paths.bars({ size: [0.85, 40] }),
          points: { show: false } },
      ],
    }, data, this.container);
    if (this.testid) this.u.root.dataset.testid = this.testid;
  }

  destroy() {
    this.observer.disconnect();
    if (this.u) this.u.destroy();
  }
}
