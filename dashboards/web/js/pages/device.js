// Device: what it runs, how accurate and compressed over time, why it was retrained, its jobs
// and versions, and the operator's actions (re-prune, roll back, pin).

import { ApiError, del, post } from "../api.js";
import * as model from "../model.js";
import { BarChart, TimeChart } from "../charts.js";
import { ago, agoEl, badge, DASH, DataTable, datetime, formDialog, h, num, pct, ratio, replace, toast } from "../ui.js";
import { jobCell } from "./fleet.js";

export function mount(view, { deviceId }, ctx) {
  ctx.setTitle(deviceId);
  const enc = encodeURIComponent(deviceId);
  const title = h("h1", { "data-testid": "device-name" }, deviceId);
  const stateBox = h("span", { "data-testid": "device-state" });
  const info = h("dl", { class: "kv", "data-testid": "device-info" });
  const figures = h("div", { class: "figures", "data-testid": "device-figures" });
  const driftNote = h("p", { class: "muted", "data-testid": "drift-note" });

  const btnReprune = h("button", { type: "button", class: "primary act", "data-testid": "action-reprune", onclick: () => reprune() }, "Re-prune now");
  const btnRollback = h("button", { type: "button", class: "act", "data-testid": "action-rollback", onclick: () => rollback() }, "Roll back");
  const btnPin = h("button", { type: "button", class: "act", "data-testid": "action-pin", onclick: () => pin() }, "Pin a version");
  const btnUnpin = h("button", { type: "button", class: "act", "data-testid": "action-unpin", onclick: () => unpin(), hidden: true }, "Unpin");
  const readOnly = h("span", { class: "read-only-note muted", "data-testid": "read-only-note" }, "Viewer: actions need an operator key.");

  const accEl = h("div", { class: "chart", "data-testid": "device-accuracy-chart" });
  const compEl = h("div", { class: "chart", "data-testid": "device-compression-chart" });
  const impEl = h("div", { class: "chart", "data-testid": "device-importance-chart" });
  const impNote = h("p", { class: "muted", "data-testid": "importance-note" });
  const triggers = h("ul", { class: "triggers", "data-testid": "device-triggers" });

  const jobsTable = new DataTable({
    testid: "device-jobs", rowKey: (j) => String(j.id), sort: { key: "id", dir: -1 }, empty: "No jobs for this device yet.",
    columns: [
      { key: "id", label: "Job", numeric: true },
      { key: "kind", label: "Kind" },
      { key: "status", label: "Status", render: (j) => jobCell(j) },
      { key: "progress", label: "Progress", numeric: true,
        render: (j) => h("span", { title: j.progress_message }, pct(j.progress, 0), j.progress_message ? ` · ${j.progress_message}` : "") },
      { key: "trigger_reason", label: "Trigger" },
      { key: "created_at", label: "Created", render: (j) => agoEl(j.created_at) },
      { key: "version_id", label: "Result", render: (j) => (j.version_id ? h("code", {}, model.shortVersion(j.version_id)) : j.error ? h("span", { class: "error" }, j.error) : DASH) },
    ],
  });
  let device = null;
  const versionsTable = new DataTable({
    testid: "device-versions", rowKey: (v) => v.id, extraSig: () => device?.deployed_version, sort: { key: "created_at", dir: -1 }, empty: "No versions built for this device yet.",
    columns: [
      { key: "id", label: "Version", render: (v) => h("span", {}, h("code", { title: v.id }, model.shortVersion(v.id)),
        device && v.id === device.deployed_version ? [" ", badge("deployed")] : null) },
      { key: "status", label: "Status", render: (v) => badge(v.status) },
      { key: "compression_ratio", label: "Compression", numeric: true, render: (v) => ratio(v.compression_ratio) },
      { key: "kl", label: "KL (nats)", numeric: true, render: (v) => num(v.kl, 4) },
      { key: "created_at", label: "Created", render: (v) => agoEl(v.created_at) },
      { key: "mlflow", label: "MLflow run", sortable: false,
        render: (v) => (v.mlflow_url ? h("a", { href: v.mlflow_url, target: "_blank", rel: "noopener" }, `run ${v.mlflow_run_id.slice(0, 8)}`)
          : v.mlflow_run_id ? h("code", { title: "set FLEET_MLFLOW_UI_URL for links" }, v.mlflow_run_id.slice(0, 8)) : DASH) },
      { key: "pin", label: "", sortable: false,
        render: (v) => h("button", { type: "button", class: "small act", "data-testid": `pin-${v.id}`, onclick: () => pin(v.id),
          disabled: v.status === "rejected" || v.status === "retired" }, "Pin") },
    ],
  });
  const eventsTable = new DataTable({
    testid: "device-events", rowKey: (e) => e.uuid, sort: { key: "at", dir: -1 }, empty: "No events reported yet.",
    columns: [
      { key: "at", label: "When", render: (e) => agoEl(e.at) },
      { key: "kind", label: "Event", render: (e) => badge(e.kind) },
      { key: "version_id", label: "Version", render: (e) => (e.version_id ? h("code", {}, model.shortVersion(e.version_id)) : DASH) },
      { key: "reason", label: "Reason" },
    ],
  });

  view.append(
    h("p", {}, h("a", { href: "#/fleet" }, "← Fleet")),
    h("div", { class: "page-head" },
      h("div", {}, h("div", { class: "row" }, title, stateBox), figures),
      h("div", { class: "actions" }, readOnly, btnReprune, btnRollback, btnPin, btnUnpin)),
    h("div", { class: "grid grid-2" },
      h("div", { class: "card" }, h("h2", {}, "Accuracy of the deployed model"), accEl,
        h("p", { class: "muted" }, "Dashed lines: the version the device reported running changed.")),
      h("div", { class: "card" }, h("h2", {}, "Compression over time"), compEl)),
    h("div", { class: "grid grid-2", style: { marginTop: "16px" } },
      h("div", { class: "card" }, h("h2", {}, "Device"), info),
      h("div", { class: "card" }, h("h2", {}, "Drift and triggers"), driftNote, triggers)),
    h("div", { class: "card", style: { marginTop: "16px" } }, h("h2", {}, "Jobs"), jobsTable.el),
    h("div", { class: "card", style: { marginTop: "16px" } }, h("h2", {}, "Versions"), versionsTable.el),
    h("div", { class: "grid grid-2", style: { marginTop: "16px" } },
      h("div", { class: "card" }, h("h2", {}, "Per-unit importance (latest version)"), impEl, impNote),
      h("div", { class: "card" }, h("h2", {}, "Events from the agent"), eventsTable.el)),
  );
  const accChart = new TimeChart(accEl, { testid: "device-accuracy-plot" });
  const compChart = new TimeChart(compEl, { testid: "device-compression-plot" });
  const impChart = new BarChart(impEl, { testid: "device-importance-plot" });
  let versions = [];
  let pinnable = []; // this device's versions and fleet-wide ones of its base model that can be assigned

  async function refresh() {
    const [detail, allVersions, policies] = await Promise.all([
      model.deviceDetail(deviceId, 500), model.listVersions({}, 1000), model.listPolicies(),
    ]);
    device = detail.device;
    versions = detail.versions;
    ctx.setTitle(device.name);
    replace(title, device.name);
    replace(stateBox, badge(model.STATE_LABELS[device.state] || device.state, device.state),
      device.pinned ? [" ", badge("pinned")] : null);
    btnUnpin.hidden = !device.pinned;
    const revoked = device.state === "revoked";
    btnReprune.disabled = revoked;
    btnRollback.disabled = revoked || !device.previous_version;
    btnRollback.title = device.previous_version ? `back to ${device.previous_version}` : "no previous version to go back to";

    const ratios = new Map(allVersions.items.map((v) => [v.id, v.compression_ratio]));
    pinnable = allVersions.items.filter((v) => (v.device_id === device.id || (!v.device_id && v.base_model === device.base_model))
      && v.status !== "rejected" && v.status !== "retired");
    btnPin.disabled = revoked || !pinnable.length;
    btnPin.title = pinnable.length ? "" : "no version of this device or fleet-wide version can be assigned yet";
    const acc = model.recentAccuracy(detail.telemetry);
    const fig = (label, value, testid) => h("div", { class: "figure", "data-testid": testid },
      h("span", { class: "v" }, value), h("span", { class: "l" }, label));
    replace(figures,
      fig("compression (deployed)", ratio(device.compression_ratio), "dev-compression"),
      fig("labelled accuracy, last hour", pct(acc.labelled), "dev-labelled"),
      fig("estimated accuracy, last hour", pct(acc.estimated), "dev-estimated"),
      fig("drift score", num(device.drift_score), "dev-drift"));

    const kv = [
      ["Id", h("code", {}, device.id)],
      ["Cohort", device.cohort],
      ["Labels", Object.entries(device.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ") || DASH],
      ["Base model", device.base_model],
      ["Agent", device.agent_version || DASH],
      ["Last seen", device.last_seen_at ? `${ago(device.last_seen_at)} (${datetime(device.last_seen_at)})` : "never"],
      ["Deployed version", device.deployed_version ? h("code", {}, device.deployed_version) : "none (dense base)"],
      ["Desired version", device.desired_version ? h("code", {}, device.desired_version) : DASH],
      ["Why", device.desired_reason || DASH],
      ["Previous version", device.previous_version ? h("code", {}, device.previous_version) : DASH],
    ];
    replace(info, kv.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));

    const policy = policies.find((p) => p.name === device.cohort) || policies.find((p) => p.name === "default");
    replace(driftNote, device.drift_score === null
      ? "No drift score yet (it needs a sketch and a deployed version built from sketches)."
      : `Drift ${num(device.drift_score)}${policy ? ` against a re-prune threshold of ${num(policy.drift_threshold)} (policy ${policy.name})` : ""}.`);
    const trig = detail.jobs.filter((j) => j.trigger_reason).slice(0, 8);
    replace(triggers, trig.length
      ? trig.map((j) => h("li", {}, h("span", { class: "muted" }, `${ago(j.created_at)} · job ${j.id}: `), j.trigger_reason))
      : h("li", { class: "muted" }, "No retrain has been triggered for this device yet."));

    const s = model.deviceSeries(detail.telemetry, (id) => ratios.get(id));
    accChart.update({
      series: [{ label: "labelled", points: s.labelled }, { label: "estimated", points: s.estimated }],
      markers: s.markers, yUnit: "pct", empty: "No telemetry yet.",
    });
    compChart.update({
      series: [{ label: "compression", points: s.compression, color: "#3a9a5b" }],
      markers: s.markers, yUnit: "ratio",
      empty: "The device has not reported running a pruned version yet.",
    });
    const imp = model.importanceOf(versions);
    impChart.update(imp ? imp.values : null, "The API does not expose per-unit importance for this device's versions.");
    replace(impNote, imp ? `Version ${model.shortVersion(imp.version)}${imp.layer ? `, layer ${imp.layer}` : ""}.` : "");

    jobsTable.setRows(detail.jobs);
    versionsTable.setRows(versions);
    eventsTable.setRows(detail.events);
  }

  async function act(what, fn) {
    try {
      const msg = await fn();
      if (msg) toast(msg, "ok");
      await ctx.refreshNow();
    } catch (err) {
      toast(err instanceof ApiError ? `${what} failed: ${err.detail}` : String(err), "error");
    }
  }

  async function reprune() {
    const v = await formDialog({
      title: "Re-prune this device now?",
      body: "A retrain job is queued from the device's latest sketches. If one is already queued or running, that one is shown.",
      fields: [{ name: "reason", label: "Reason (kept in the audit log)", value: "operator request" }],
      submit: "Queue retrain",
    });
    if (!v) return;
    await act("Re-prune", async () => {
      const r = await post(`devices/${enc}/reprune`, { reason: v.reason || "operator request" });
      return r.created ? `Job ${r.job.id} queued.` : `Job ${r.job.id} is already ${r.job.status}.`;
    });
  }

  async function rollback() {
    const v = await formDialog({
      title: "Roll back this device?",
      body: `It will be assigned ${device?.previous_version || "its previous version"} again.`,
      fields: [{ name: "reason", label: "Reason", value: "" }], submit: "Roll back", danger: true,
    });
    if (!v) return;
    await act("Roll back", async () => {
      const d = await post(`devices/${enc}/rollback`, { reason: v.reason });
      return `Now assigned ${d.desired_version || "the dense base"}.`;
    });
  }

  async function pin(versionId) {
    const options = pinnable.map((x) => ({
      value: x.id, label: `${x.id} (${ratio(x.compression_ratio)}${x.device_id ? "" : ", fleet-wide"})`,
    }));
    if (!versionId && !options.length) {
      toast("No version can be pinned to this device yet.", "error");
      return;
    }
    const v = await formDialog({
      title: "Pin a version",
      body: "The device is assigned this version and keeps it: automatic deploys and rollouts skip it until unpinned.",
      fields: [
        versionId ? { name: "version_id", label: "Version", value: versionId }
          : { name: "version_id", label: "Version", options, value: options[0].value },
        { name: "reason", label: "Reason", value: "" },
      ],
      submit: "Pin",
    });
    if (!v) return;
    await act("Pin", async () => {
      await post(`devices/${enc}/pin`, { version_id: v.version_id, reason: v.reason });
      return `Pinned ${v.version_id}.`;
    });
  }

  async function unpin() {
    await act("Unpin", async () => {
      await del(`devices/${enc}/pin`);
      return "Unpinned.";
    });
  }

  return {
    refresh,
    destroy() {
      accChart.destroy();
      compChart.destroy();
      impChart.destroy();
    },
  };
}
