// Versions: every registered model version, its figures and MLflow run; select runs to open
// MLflow's compare view; approve / reject / retire.

import { ApiError, request } from "../api.js";
import * as model from "../model.js";
import { agoEl, badge, DASH, DataTable, h, int, num, ratio, replace, toast } from "../ui.js";

const VERSION_STATUSES = ["candidate", "approved", "rejected", "retired"];

export function mount(view, params, ctx) {
  ctx.setTitle("Versions");
  const selected = new Set();
  const names = new Map();
  let status = "";
  let search = "";
  let rows = [];
  let total = 0;

  const compare = h("a", { class: "button", "data-testid": "mlflow-compare", target: "_blank", rel: "noopener", hidden: true }, "Compare in MLflow");
  const compareNote = h("span", { class: "muted", "data-testid": "compare-note" });
  const statusSelect = h("select", { "data-testid": "version-status-filter", onchange: () => { status = statusSelect.value; ctx.refreshNow(); } },
    h("option", { value: "" }, "All statuses"), VERSION_STATUSES.map((s) => h("option", { value: s }, s)));
  const searchInput = h("input", { type: "search", placeholder: "Version, device or run", "data-testid": "version-search",
    oninput: () => { search = searchInput.value.trim().toLowerCase(); apply(); } });
  const shown = h("span", { class: "muted", "data-testid": "version-shown" });

  const table = new DataTable({
    testid: "versions-table", rowKey: (v) => v.id, extraSig: (v) => `${names.get(v.device_id)}|${selected.has(v.id)}`, sort: { key: "created_at", dir: -1 }, empty: "No versions yet.",
    columns: [
      { key: "select", label: "", sortable: false, render: (v) => h("input", {
        type: "checkbox", "aria-label": `select ${v.id}`, "data-testid": `select-${v.id}`, checked: selected.has(v.id),
        disabled: !v.mlflow_run_id,
        onchange: (ev) => { if (ev.target.checked) selected.add(v.id); else selected.delete(v.id); renderCompare(); },
      }) },
      { key: "id", label: "Version", render: (v) => h("code", { title: v.id }, v.id) },
      { key: "device_id", label: "Device", value: (v) => names.get(v.device_id) || v.device_id || "",
        render: (v) => (v.device_id ? h("a", { href: `#/devices/${encodeURIComponent(v.device_id)}` }, names.get(v.device_id) || v.device_id) : h("span", { class: "muted" }, "fleet-wide")) },
      { key: "status", label: "Status", render: (v) => badge(v.status) },
      { key: "compression_ratio", label: "Compression", numeric: true, render: (v) => ratio(v.compression_ratio) },
      { key: "kl", label: "KL (nats)", numeric: true, render: (v) => num(v.kl, 4) },
      { key: "download_bytes", label: "Download", numeric: true, render: (v) => `${int(v.download_bytes)} B` },
      { key: "base", label: "Base", value: (v) => `${v.base_model}@${v.base_version}` },
      { key: "job_id", label: "Job", numeric: true },
      { key: "created_at", label: "Created", render: (v) => agoEl(v.created_at) },
      { key: "mlflow", label: "MLflow", sortable: false, render: (v) => (v.mlflow_url
        ? h("a", { href: v.mlflow_url, target: "_blank", rel: "noopener" }, `${v.mlflow_name || "run"} v${v.mlflow_version || "?"}`)
        : v.mlflow_run_id ? h("code", {}, v.mlflow_run_id.slice(0, 8)) : DASH) },
      { key: "actions", label: "", sortable: false, render: (v) => h("span", { class: "act row" },
        v.status !== "approved" && v.status !== "retired" ? h("button", { type: "button", class: "small", "data-testid": `approve-${v.id}`, onclick: () => setStatus(v, "approved") }, "Approve") : null,
        v.status === "candidate" ? h("button", { type: "button", class: "small", onclick: () => setStatus(v, "rejected") }, "Reject") : null,
        v.status === "approved" ? h("button", { type: "button", class: "small", onclick: () => setStatus(v, "retired") }, "Retire") : null) },
    ],
  });

  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Versions"), h("div", { class: "actions" }, compareNote, compare)),
    h("div", { class: "card" }, h("div", { class: "toolbar" }, statusSelect, searchInput, shown), table.el),
  );

  function renderCompare() {
    const chosen = rows.filter((v) => selected.has(v.id));
    const url = model.mlflowCompareUrl(chosen);
    compare.hidden = !url;
    if (url) compare.href = url;
    replace(compareNote, chosen.length < 2 ? "Select two or more versions to compare their runs."
      : url ? `${chosen.length} runs selected.` : "The server has no MLflow UI address (FLEET_MLFLOW_UI_URL), so no link.");
  }

  function apply() {
    table.setFilter((v) => !search || [v.id, v.device_id, names.get(v.device_id), v.mlflow_run_id]
      .some((x) => (x || "").toLowerCase().includes(search)));
    replace(shown, `${table.shown} shown of ${int(total)}`);
  }

  async function setStatus(v, next) {
    try {
      await request("PATCH", `versions/${encodeURIComponent(v.id)}`, { body: { status: next } });
      toast(`${v.id}: ${next}.`, "ok");
      await ctx.refreshNow();
    } catch (err) {
      toast(err instanceof ApiError ? `Status change failed: ${err.detail}` : String(err), "error");
    }
  }

  async function refresh() {
    const [versions, devices] = await Promise.all([model.listVersions(status ? { status } : {}, 1000), model.listDevices()]);
    for (const d of devices.items) names.set(d.id, d.name);
    rows = versions.items;
    total = versions.total;
    table.setRows(rows);
    apply();
    renderCompare();
  }

  return { refresh, destroy() {} };
}
