// Policies: what triggers a re-prune and what a version must meet, for the fleet (`default`) and for
// each cohort with its own; edit, add (operator), delete a cohort's (admin).

import { ApiError, del, put } from "../api.js";
import * as model from "../model.js";
import { agoEl, badge, DataTable, formDialog, h, int, num, ratio, toast } from "../ui.js";

// PolicyValues (control_plane/schemas.py): the form's fields, in the API's units.
const FIELDS = [
  { name: "kl_budget", label: "KL budget (nats)", step: "any", min: "0.001", max: "10",
    help: "Most KL(dense ‖ pruned) a version may cost. 0.045 is the product default; a device's own, narrower data often allows more (docs/dynamic-loop.md)." },
  { name: "min_compression", label: "Minimum compression (×)", step: "any", min: "1", max: "1000" },
  { name: "accuracy_drop_pp", label: "Re-prune when accuracy falls (pp)", step: "any", min: "0.1", max: "100" },
  { name: "drift_threshold", label: "Re-prune above drift (JS, 0–1)", step: "any", min: "0.0001", max: "1" },
  { name: "interval_s", label: "Re-prune at least every (s)", step: "any", min: "60" },
];

export function mount(view, params, ctx) {
  ctx.setTitle("Policies");
  let policies = [];
  const devicesPer = new Map(); // policy name -> devices it applies to
  const btnNew = h("button", { type: "button", class: "primary act", "data-testid": "policy-new", onclick: () => edit(null) },
    "New cohort policy");
  const readOnly = h("span", { class: "read-only-note muted" }, "Viewer: policies need an operator key.");

  const table = new DataTable({
    testid: "policies-table", rowKey: (p) => p.name, extraSig: (p) => devicesPer.get(p.name), sort: { key: "name", dir: 1 },
    empty: "No policies.",
    columns: [
      { key: "name", label: "Policy", render: (p) => p.name === "default" ? h("span", {}, "default ", badge("fleet", "completed")) : p.name },
      { key: "devices", label: "Devices", numeric: true, value: (p) => devicesPer.get(p.name) || 0,
        render: (p) => h("span", { title: "devices whose cohort follows this policy (revoked ones aside)" }, int(devicesPer.get(p.name) || 0)) },
      { key: "kl_budget", label: "KL budget", numeric: true, render: (p) => num(p.kl_budget) },
      { key: "min_compression", label: "Min. compression", numeric: true, render: (p) => ratio(p.min_compression) },
      { key: "accuracy_drop_pp", label: "Accuracy drop (pp)", numeric: true, render: (p) => num(p.accuracy_drop_pp, 1) },
      { key: "drift_threshold", label: "Drift", numeric: true, render: (p) => num(p.drift_threshold) },
      { key: "interval_s", label: "Interval", numeric: true, render: (p) => interval(p.interval_s) },
      { key: "auto_deploy", label: "Deploy", render: (p) => p.auto_deploy ? "automatic" : "by rollout" },
      { key: "updated_at", label: "Updated", render: (p) => p.updated_at ? agoEl(p.updated_at) : "built in" },
      { key: "actions", label: "", sortable: false, render: (p) => actions(p) },
    ],
  });

  view.append(
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Policies"),
      h("p", { class: "muted" }, "What makes the controller re-prune a device, and what a new version must meet to deploy. A cohort without its own policy follows default.")),
    h("div", { class: "actions" }, readOnly, btnNew)),
    h("div", { class: "card" }, table.el),
  );

  function interval(s) {
    return s >= 3600 ? `${num(s / 3600, 1)} h` : `${int(Math.round(s / 60))} min`;
  }

  function actions(p) {
    const editBtn = h("button", { type: "button", class: "small", "data-testid": `policy-edit-${p.name}`, onclick: () => edit(p) }, "Edit");
    const canDelete = p.name !== "default" && ctx.session?.role === "admin"; // DELETE is admin-only in the API
    const delBtn = canDelete
      ? h("button", { type: "button", class: "small danger", "data-testid": `policy-delete-${p.name}`, onclick: () => remove(p) }, "Delete")
      : null;
    return h("span", { class: "act row" }, editBtn, delBtn);
  }

  async function edit(p) {
    const base = p || policies.find((x) => x.name === "default");
    const fields = [
      ...(p ? [] : [{ name: "name", label: "Cohort", required: true, placeholder: "plant-a" }]),
      ...FIELDS.map((f) => ({ ...f, type: "number", required: true, value: String(base[f.name]) })),
      { name: "auto_deploy", label: "Deploy a passing version", value: String(base.auto_deploy),
        options: [{ value: "true", label: "automatically" }, { value: "false", label: "only through a rollout" }] },
    ];
    const v = await formDialog({ title: p ? `Policy ${p.name}` : "New cohort policy",
      body: p ? null : "Starts from the default policy's values.", fields, submit: "Save policy" });
    if (!v) return;
    const name = p ? p.name : v.name.trim();
    const body = { auto_deploy: v.auto_deploy === "true", extra: base.extra || {} };
    for (const f of FIELDS) body[f.name] = Number(v[f.name]);
    try {
      await put(`policies/${encodeURIComponent(name)}`, body);
      toast(`Policy ${name} saved.`, "ok");
      await ctx.refreshNow();
    } catch (err) {
      toast(err instanceof ApiError ? `Policy ${name} not saved: ${err.detail}` : String(err), "error");
    }
  }

  async function remove(p) {
    const ok = await formDialog({ title: `Delete policy ${p.name}?`, body: "The cohort follows the default policy from then on.",
      submit: "Delete policy", danger: true });
    if (!ok) return;
    try {
      await del(`policies/${encodeURIComponent(p.name)}`);
      toast(`Policy ${p.name} deleted.`, "ok");
      await ctx.refreshNow();
    } catch (err) {
      toast(err instanceof ApiError ? `Delete failed: ${err.detail}` : String(err), "error");
    }
  }

  async function refresh() {
    const [ps, devices] = await Promise.all([model.listPolicies(), model.listDevices()]);
    policies = ps;
    const own = new Set(ps.map((p) => p.name));
    devicesPer.clear();
    for (const d of devices.items) {
      if (d.state === "revoked") continue;
      const name = own.has(d.cohort) ? d.cohort : "default";
      devicesPer.set(name, (devicesPer.get(name) || 0) + 1);
    }
    table.setRows(policies);
  }

  return { refresh, destroy() {} };
}
