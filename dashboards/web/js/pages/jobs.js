// Jobs: the retrain queue, newest first, with progress, filters and cancel.

import { ApiError, post } from "../api.js";
import * as model from "../model.js";
import { agoEl, badge, DASH, DataTable, h, int, pct, replace, toast } from "../ui.js";

const JOB_STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

export function mount(view, params, ctx) {
  ctx.setTitle("Jobs");
  let status = "";
  let search = "";
  const counts = h("div", { class: "figures", "data-testid": "job-counts" });
  const statusSelect = h("select", { "data-testid": "job-status-filter", onchange: () => { status = statusSelect.value; ctx.refreshNow(); } },
    h("option", { value: "" }, "All statuses"), JOB_STATUSES.map((s) => h("option", { value: s }, s)));
  const searchInput = h("input", { type: "search", placeholder: "Device, trigger or version", "data-testid": "job-search",
    oninput: () => { search = searchInput.value.trim().toLowerCase(); apply(); } });
  const shown = h("span", { class: "muted", "data-testid": "job-shown" });
  const names = new Map();

  const table = new DataTable({
    testid: "jobs-table", rowKey: (j) => String(j.id), extraSig: (j) => names.get(j.device_id), sort: { key: "id", dir: -1 }, empty: "No jobs.",
    columns: [
      { key: "id", label: "Job", numeric: true },
      { key: "device_id", label: "Device", value: (j) => names.get(j.device_id) || j.device_id,
        render: (j) => (j.device_id ? h("a", { href: `#/devices/${encodeURIComponent(j.device_id)}` }, names.get(j.device_id) || j.device_id) : DASH) },
      { key: "kind", label: "Kind" },
      { key: "status", label: "Status", render: (j) => badge(j.status) },
      { key: "progress", label: "Progress", numeric: true, render: (j) => h("span", { title: j.progress_message || "" },
        h("span", { class: "progress" }, h("span", { style: { width: `${Math.round((j.progress || 0) * 100)}%` } })), " ", pct(j.progress, 0)) },
      { key: "progress_message", label: "Step" },
      { key: "trigger_reason", label: "Trigger" },
      { key: "attempts", label: "Attempts", numeric: true, render: (j) => `${j.attempts}/${j.max_attempts}` },
      { key: "created_at", label: "Created", render: (j) => agoEl(j.created_at) },
      { key: "finished_at", label: "Finished", render: (j) => (j.finished_at ? agoEl(j.finished_at) : DASH) },
      { key: "version_id", label: "Result", render: (j) => (j.version_id ? h("code", { title: j.version_id }, model.shortVersion(j.version_id))
        : j.error ? h("span", { class: "error", title: j.error }, j.error.slice(0, 80)) : DASH) },
      { key: "cancel", label: "", sortable: false, render: (j) => (model.ACTIVE_JOB.has(j.status)
        ? h("button", { type: "button", class: "small act", "data-testid": `cancel-${j.id}`, onclick: () => cancel(j) }, "Cancel") : "") },
    ],
  });

  view.append(
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Jobs"), counts)),
    h("div", { class: "card" }, h("div", { class: "toolbar" }, statusSelect, searchInput, shown), table.el),
  );

  let rows = [];
  let total = 0;
  function apply() {
    table.setFilter((j) => !search || [names.get(j.device_id), j.device_id, j.trigger_reason, j.version_id, j.kind]
      .some((x) => (x || "").toLowerCase().includes(search)));
    replace(shown, `${table.shown} shown of ${int(total)}${rows.length < total ? ` (newest ${rows.length} loaded)` : ""}`);
  }

  async function cancel(job) {
    try {
      await post(`jobs/${job.id}/cancel`);
      toast(`Job ${job.id} cancelled.`, "ok");
      await ctx.refreshNow();
    } catch (err) {
      toast(err instanceof ApiError ? `Cancel failed: ${err.detail}` : String(err), "error");
    }
  }

  async function refresh() {
    const [jobs, summary, devices] = await Promise.all([
      model.listJobs(status ? { status } : {}, 1000), model.fleetSummary(), model.listDevices(),
    ]);
    for (const d of devices.items) names.set(d.id, d.name);
    rows = jobs.items;
    total = jobs.total;
    replace(counts, JOB_STATUSES.map((s) => h("div", { class: "figure", "data-testid": `jobs-${s}` },
      h("span", { class: "v" }, int(summary.jobs_by_status[s] || 0)), h("span", { class: "l" }, s))));
    table.setRows(rows);
    apply();
  }

  return { refresh, destroy() {} };
}
