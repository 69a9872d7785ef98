// Rollouts: a fleet-wide version to a cohort in stages; create, advance, pause, resume, abort.

import { ApiError, post } from "../api.js";
import * as model from "../model.js";
import { agoEl, badge, DASH, DataTable, formDialog, h, int, replace, toast } from "../ui.js";

export function mount(view, params, ctx) {
  ctx.setTitle("Rollouts");
  let versions = [];
  let cohorts = [];
  let loaded = false;
  const cohortSizes = new Map(); // "cohort|base_model" -> devices a rollout could move
  const baseOf = new Map(); // version id -> base model
  const btnCreate = h("button", { type: "button", class: "primary act", "data-testid": "rollout-create", onclick: () => create() }, "New rollout");
  const readOnly = h("span", { class: "read-only-note muted" }, "Viewer: rollouts need an operator key.");
  const formBox = h("div", { class: "card", hidden: true, "data-testid": "rollout-form-card" });

  const table = new DataTable({
    testid: "rollouts-table", rowKey: (r) => String(r.id), extraSig: (r) => cohortSizes.get(`${r.cohort}|${baseOf.get(r.version_id)}`), sort: { key: "id", dir: -1 }, empty: "No rollouts yet.",
    columns: [
      { key: "id", label: "Rollout", numeric: true },
      { key: "version_id", label: "Version", render: (r) => h("code", { title: r.version_id }, model.shortVersion(r.version_id)) },
      { key: "cohort", label: "Cohort" },
      { key: "state", label: "State", render: (r) => badge(r.state) },
      { key: "stage", label: "Stages", value: (r) => r.stage, render: (r) => stages(r) },
      { key: "devices", label: "Devices moved", numeric: true,
        render: (r) => {
          const n = cohortSizes.get(`${r.cohort}|${baseOf.get(r.version_id)}`);
          return h("span", { title: "devices this rollout assigned / unpinned devices of the cohort on the version's base model" },
            n === undefined ? int(r.devices) : `${int(r.devices)} of ${int(n)}`);
        } },
      { key: "thresholds", label: "Thresholds", sortable: false,
        render: (r) => Object.entries(r.thresholds || {}).map(([k, v]) => h("div", { class: "mono" }, `${k} = ${v}`)) },
      { key: "reason", label: "Reason" },
      { key: "updated_at", label: "Updated", render: (r) => agoEl(r.updated_at) },
      { key: "actions", label: "", sortable: false, render: (r) => actions(r) },
    ],
  });

  view.append(
    h("div", { class: "page-head" }, h("div", {}, h("h1", {}, "Rollouts"),
      h("p", { class: "muted" }, "A fleet-wide version goes to a cohort stage by stage; the controller advances or aborts on the thresholds, or you do it here.")),
    h("div", { class: "actions" }, readOnly, btnCreate)),
    formBox,
    h("div", { class: "card", style: { marginTop: "16px" } }, table.el),
  );

  function stages(r) {
    return h("span", { class: "row", style: { gap: "4px" }, "data-testid": `stages-${r.id}` }, r.stages.map((s, i) => {
      const done = r.state === "completed" || i < r.stage;
      const cur = i === r.stage && r.state !== "completed";
      return h("span", { class: `badge ${done ? "badge-completed" : cur ? `badge-${r.state}` : ""}`,
        title: done ? "done" : cur ? "current stage" : "to come" }, `${Math.round(s * 100)} %`);
    }));
  }

  function actions(r) {
    const btn = (name, label, cls = "small") => h("button", { type: "button", class: cls, "data-testid": `${name}-${r.id}`,
      onclick: () => act(r, name) }, label);
    if (r.state === "active") return h("span", { class: "act row" }, btn("advance", r.stage + 2 >= r.stages.length ? "Complete" : "Advance"), btn("pause", "Pause"), btn("abort", "Abort", "small danger"));
    if (r.state === "paused") return h("span", { class: "act row" }, btn("resume", "Resume"), btn("abort", "Abort", "small danger"));
    // The API undoes a completed rollout too: its devices go back to what they ran before.
    if (r.state === "completed") return h("span", { class: "act row" }, btn("abort", "Undo", "small danger"));
    return "";
  }

  async function act(r, name) {
    let reason = `dashboard: ${name}`;
    if (name === "abort") {
      const v = await formDialog({ title: `Abort rollout ${r.id}?`, body: "Every device it moved goes back to its previous version.",
        fields: [{ name: "reason", label: "Reason", value: "" }], submit: "Abort rollout", danger: true });
      if (!v) return;
      reason = v.reason || reason;
    }
    try {
      const res = await post(`rollouts/${r.id}/${name}`, { reason });
      toast(`Rollout ${r.id}: ${res.state}, stage ${res.stage + 1} of ${res.stages.length}.`, "ok");
      await ctx.refreshNow();
    } catch (err) {
      toast(err instanceof ApiError ? `${name} failed: ${err.detail}` : String(err), "error");
    }
  }

  async function create() {
    if (!loaded) await refresh(); // the form lists versions and cohorts: load them first
    const eligible = versions.filter((v) => !v.device_id && v.status !== "rejected" && v.status !== "retired");
    const versionSel = h("select", { name: "version_id", required: true, "data-testid": "rollout-version" },
      eligible.length ? eligible.map((v) => h("option", { value: v.id }, `${v.id} (${v.compression_ratio ? `${v.compression_ratio.toFixed(1)}×` : DASH}, ${v.status})`))
        : h("option", { value: "" }, "no fleet-wide version available"));
    const cohortIn = h("input", { name: "cohort", required: true, list: "cohort-list", value: cohorts[0] || "default", "data-testid": "rollout-cohort" });
    const stagesIn = h("input", { name: "stages", required: true, value: "0.1, 0.5, 1.0", "data-testid": "rollout-stages" });
    const dropIn = h("input", { name: "max_accuracy_drop_pp", type: "number", step: "0.1", min: "0", value: "2.0" });
    const minIn = h("input", { name: "min_devices_reporting", type: "number", step: "1", min: "0", value: "1" });
    const reasonIn = h("input", { name: "reason", value: "" });
    const error = h("p", { class: "error", role: "alert", hidden: true, "data-testid": "rollout-error" });
    const form = h("form", { class: "dialog-form", "data-testid": "rollout-form" },
      h("h2", {}, "New rollout"),
      h("label", {}, h("span", {}, "Version (fleet-wide)"), versionSel),
      h("label", {}, h("span", {}, "Cohort"), cohortIn, h("datalist", { id: "cohort-list" }, cohorts.map((c) => h("option", { value: c })))),
      h("label", {}, h("span", {}, "Stages"), stagesIn, h("small", {}, "Increasing shares of the cohort, the last one 1.0.")),
      h("div", { class: "row" },
        h("label", {}, h("span", {}, "Max accuracy drop (pp)"), dropIn),
        h("label", {}, h("span", {}, "Min devices reporting"), minIn)),
      h("label", {}, h("span", {}, "Reason"), reasonIn),
      error,
      h("div", { class: "dialog-actions" },
        h("button", { type: "button", onclick: () => { formBox.hidden = true; } }, "Cancel"),
        h("button", { type: "submit", class: "primary", "data-testid": "rollout-submit", disabled: !eligible.length }, "Start rollout")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.hidden = true;
      const stagesList = stagesIn.value.split(/[,\s]+/).filter(Boolean).map(Number);
      try {
        const r = await post("rollouts", {
          version_id: versionSel.value, cohort: cohortIn.value.trim(), stages: stagesList,
          thresholds: { max_accuracy_drop_pp: Number(dropIn.value), min_devices_reporting: Number(minIn.value) },
          reason: reasonIn.value,
        });
        formBox.hidden = true;
        toast(`Rollout ${r.id} started: ${r.devices} device(s) in stage 1.`, "ok");
        await ctx.refreshNow();
      } catch (err) {
        error.textContent = err instanceof ApiError ? err.detail : String(err);
        error.hidden = false;
      }
    });
    replace(formBox, form);
    formBox.hidden = false;
  }

  async function refresh() {
    const [rollouts, vs, devices] = await Promise.all([model.listRollouts(), model.listVersions({}, 1000), model.listDevices()]);
    versions = vs.items;
    for (const v of versions) baseOf.set(v.id, v.base_model);
    cohortSizes.clear();
    for (const d of devices.items) {
      if (d.state === "revoked" || d.pinned) continue;
      const key = `${d.cohort}|${d.base_model}`;
      cohortSizes.set(key, (cohortSizes.get(key) || 0) + 1);
    }
    cohorts = [...new Set(devices.items.map((d) => d.cohort))].sort();
    table.setRows(rollouts);
    loaded = true;
  }

  return { refresh, destroy() {} };
}
