// Fleet: devices by state, the device table (filter, sort, search) and fleet-wide series.

import * as model from "../model.js";
import { TimeChart } from "../charts.js";
import { agoEl, badge, DASH, DataTable, h, int, num, pct, ratio, replace } from "../ui.js";

const TILE_STATES = ["healthy", "drifting", "retraining", "rolling_back", "offline"];

export function mount(view, params, ctx) {
  ctx.setTitle("Fleet");
  let stateFilter = new URLSearchParams(location.hash.split("?")[1] || "").get("state") || "";
  let search = "";
  let details = new Map(); // device id -> detail (telemetry) for the first devices
  let tick = 0;

  const tiles = h("div", { class: "tiles", "data-testid": "state-tiles" });
  const figures = h("div", { class: "figures", "data-testid": "fleet-figures" });
  const searchInput = h("input", {
    type: "search", placeholder: "Search name, id or version", "data-testid": "device-search",
    oninput: () => {
      search = searchInput.value.trim().toLowerCase();
      applyFilter();
    },
  });
  const stateSelect = h("select", {
    "data-testid": "state-filter",
    onchange: () => {
      stateFilter = stateSelect.value;
      applyFilter();
      renderTiles(lastSummary);
    },
  }, h("option", { value: "" }, "All states"),
  model.STATES.map((s) => h("option", { value: s }, model.STATE_LABELS[s])));
  stateSelect.value = stateFilter;
  const countNote = h("span", { class: "muted", "data-testid": "device-count" });

  const table = new DataTable({
    testid: "device-table",
    rowKey: (d) => d.id,
    sort: { key: "name", dir: 1 },
    empty: "No devices match.",
    onRowClick: (d) => ctx.navigate(`#/devices/${encodeURIComponent(d.id)}`),
    columns: [
      { key: "name", label: "Device", render: (d) => h("a", { href: `#/devices/${encodeURIComponent(d.id)}` }, d.name) },
      { key: "state", label: "State", render: (d) => h("span", {}, badge(model.STATE_LABELS[d.state] || d.state, d.state),
        d.pinned ? [" ", badge("pinned")] : null) },
      { key: "cohort", label: "Cohort" },
      { key: "deployed_version", label: "Deployed version",
        render: (d) => d.deployed_version ? h("code", { title: d.deployed_version }, model.shortVersion(d.deployed_version)) : DASH },
      { key: "compression_ratio", label: "Compression", numeric: true, render: (d) => ratio(d.compression_ratio) },
      { key: "labelled", label: "Labelled acc. (1 h)", numeric: true, value: (d) => d.acc?.labelled ?? null,
        render: (d) => (d.acc ? pct(d.acc.labelled) : h("span", { class: "muted", title: "not loaded (see below)" }, DASH)) },
      { key: "estimated", label: "Estimated acc. (1 h)", numeric: true, value: (d) => d.acc?.estimated ?? null,
        render: (d) => (d.acc ? pct(d.acc.estimated) : h("span", { class: "muted" }, DASH)) },
      { key: "drift_score", label: "Drift", numeric: true, render: (d) => num(d.drift_score) },
      { key: "last_seen_at", label: "Last seen", value: (d) => d.last_seen_at, render: (d) => agoEl(d.last_seen_at) },
      { key: "job", label: "Job", value: (d) => d.job?.status ?? null, render: (d) => jobCell(d.job) },
    ],
  });

  const accChart = h("div", { class: "chart", "data-testid": "fleet-accuracy-chart" });
  const compChart = h("div", { class: "chart", "data-testid": "fleet-compression-chart" });
  const seriesNote = h("p", { class: "muted", "data-testid": "series-note" });

  view.append(
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Fleet"), figures)),
    tiles,
    h("div", { class: "card" },
      h("div", { class: "toolbar" }, searchInput, stateSelect, countNote),
      table.el),
    h("div", { class: "grid grid-2", style: { marginTop: "16px" } },
      h("div", { class: "card" }, h("h2", {}, "Fleet accuracy over time"), accChart),
      h("div", { class: "card" }, h("h2", {}, "Fleet compression over time"), compChart)),
    seriesNote,
  );
  const acc = new TimeChart(accChart, { testid: "fleet-accuracy-plot" });
  const comp = new TimeChart(compChart, { testid: "fleet-compression-plot" });

  let lastSummary = null;
  let devices = [];

  function renderTiles(summary) {
    if (!summary) return;
    const tile = (key, n, label) => h("button", {
      type: "button", class: `tile ${key || "all"}${stateFilter === key ? " selected" : ""}`,
      "data-testid": `tile-${key || "all"}`, "data-count": n,
      onclick: () => {
        stateFilter = stateFilter === key ? "" : key;
        stateSelect.value = stateFilter;
        applyFilter();
        renderTiles(lastSummary);
      },
    }, h("span", { class: "n" }, int(n)), h("span", { class: "l" }, label));
    const others = (summary.by_state.pending || 0) + (summary.by_state.revoked || 0);
    replace(tiles, tile("", summary.devices, "All devices"),
      TILE_STATES.map((s) => tile(s, summary.by_state[s] || 0, model.STATE_LABELS[s])),
      others ? h("div", { class: "tile", "data-testid": "tile-other" },
        h("span", { class: "n" }, int(others)),
        h("span", { class: "l" }, `pending ${summary.by_state.pending || 0} · revoked ${summary.by_state.revoked || 0}`)) : null);
  }

  function renderFigures(summary) {
    const fig = (label, value, testid) => h("div", { class: "figure", "data-testid": testid },
      h("span", { class: "v" }, value), h("span", { class: "l" }, label));
    const jobsActive = (summary.jobs_by_status.queued || 0) + (summary.jobs_by_status.running || 0);
    replace(figures,
      fig("labelled accuracy, last hour", pct(summary.labelled_accuracy_1h), "fig-labelled"),
      fig("estimated accuracy, last hour", pct(summary.estimated_accuracy_1h), "fig-estimated"),
      fig("mean compression deployed", ratio(summary.mean_compression_deployed), "fig-compression"),
      fig("jobs queued or running", int(jobsActive), "fig-jobs"),
      fig("versions", int(summary.versions), "fig-versions"));
  }

  function applyFilter() {
    table.setFilter((d) => (!stateFilter || d.state === stateFilter) && (!search ||
      d.name.toLowerCase().includes(search) || d.id.toLowerCase().startsWith(search) ||
      (d.deployed_version || "").toLowerCase().includes(search)));
    replace(countNote, `${table.shown} of ${devices.length} devices`);
  }

  async function refresh() {
    const [summary, devs, jobs, versions] = await Promise.all([
      model.fleetSummary(), model.listDevices(), model.listJobs({}, 1000), model.listVersions({}, 1000),
    ]);
    // Telemetry for the per-device accuracy and the fleet series: one detail per device, for the
    // first devices only, re-read every third refresh (the API has no per-device accuracy field).
    const sample = devs.items.filter((d) => d.state !== "revoked").slice(0, model.FLEET_SERIES_MAX_DEVICES);
    if (tick % 3 === 0 || sample.some((d) => !details.has(d.id))) {
      const got = await Promise.all(sample.map((d) => model.deviceDetail(d.id, 500).catch(() => null)));
      details = new Map(got.filter(Boolean).map((x) => [x.device.id, x]));
    }
    tick += 1;
    const ratios = new Map(versions.items.map((v) => [v.id, v.compression_ratio]));
    const latest = model.latestJobByDevice(jobs.items);
    const now = Date.now() / 1000;
    devices = devs.items.map((d) => ({
      ...d,
      job: latest.get(d.id) || null,
      acc: details.has(d.id) ? model.recentAccuracy(details.get(d.id).telemetry, now) : null,
    }));
    lastSummary = summary;
    renderFigures(summary);
    renderTiles(summary);
    table.setRows(devices);
    applyFilter();
    const series = model.fleetSeries([...details.values()].map((x) => x.telemetry), (id) => ratios.get(id));
    acc.update({
      series: [
        { label: "labelled", points: series.labelled },
        { label: "estimated", points: series.estimated },
      ],
      yUnit: "pct",
      empty: "No telemetry yet.",
    });
    comp.update({
      series: [{ label: "mean compression", points: series.compression, color: "#3a9a5b" }],
      yUnit: "ratio",
      empty: "No device has reported running a pruned version yet.",
    });
    const n = devs.items.filter((d) => d.state !== "revoked").length;
    replace(seriesNote, n > details.size
      ? `Accuracy columns and series cover the first ${details.size} of ${n} devices (read from each device's telemetry).`
      : "Accuracy columns and series are computed from each device's telemetry records.");
  }

  return {
    refresh,
    destroy() {
      acc.destroy();
      comp.destroy();
    },
  };
}

export function jobCell(job) {
  if (!job) return DASH;
  const bits = [badge(job.status)];
  if (job.status === "running") {
    bits.push(" ", h("span", { class: "progress", title: job.progress_message || "" },
      h("span", { style: { width: `${Math.round((job.progress || 0) * 100)}%` } })));
  }
  return h("span", { title: job.trigger_reason || "" }, bits);
}
