// What the pages need, read from the operator API (`/api/v1`, see the control plane's OpenAPI).
// Everything the UI derives from API data (per-device accuracy, fleet series) is computed here,
// in one place, with the same definitions the API uses for its own figures.

import { ApiError, get, request } from "./api.js";
import { toEpoch } from "./ui.js";

export const STATES = ["healthy", "drifting", "retraining", "rolling_back", "offline", "pending", "revoked"];
export const STATE_LABELS = {
  healthy: "Healthy", drifting: "Drifting", retraining: "Retraining", rolling_back: "Rolling back",
  offline: "Offline", pending: "Pending", revoked: "Revoked",
};
export const ACTIVE_JOB = new Set(["queued", "running"]);
// Window of the per-device accuracy in the fleet table: the fleet summary's `*_accuracy_1h` window.
export const ACCURACY_WINDOW_S = 3600;
// Devices whose telemetry the fleet page reads to draw fleet-wide series (one request each).
export const FLEET_SERIES_MAX_DEVICES = 50;

// ---- session ----------------------------------------------------------------------------------
let openapiPaths = null;

async function apiPaths() {
  if (!openapiPaths) {
    const res = await fetch(new URL("../openapi.json", document.baseURI));
    openapiPaths = res.ok ? Object.keys((await res.json()).paths || {}) : [];
  }
  return openapiPaths;
}

// The caller's role. Prefers `GET /api/v1/me` when the API has it. Until then: the key is checked
// with a viewer read, and operator rights with a request the API refuses before doing anything
// (a rollout without a body: 403 for a viewer, 422 for an operator, since roles are checked first).
export async function whoami(key) {
  const opts = key ? { key } : {};
  const paths = await apiPaths();
  if (paths.includes("/api/v1/me")) {
    const me = await get("me", {}, opts);
    return { role: me.role, name: me.name || "", canAct: me.role !== "viewer" };
  }
  await get("fleet/summary", {}, opts);
  let role = "viewer";
  try {
    await request("POST", "rollouts", { ...opts, params: { role_probe: 1 }, body: { role_probe: true } });
    role = "operator";
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    if (err.status === 422 || err.status === 404 || err.status === 409) role = "operator";
    else if (err.status !== 403) throw err;
  }
  return { role, name: "", canAct: role !== "viewer" };
}

// ---- lists ------------------------------------------------------------------------------------
// GET a paged list ({items, total}) completely, up to `max` items.
async function all(path, params = {}, max = 5000) {
  const items = [];
  let total = 0;
  for (let offset = 0; offset < max; offset += 1000) {
    const page = await get(path, { ...params, limit: Math.min(1000, max - offset), offset });
    items.push(...page.items);
    total = page.total;
    if (items.length >= total || page.items.length === 0) break;
  }
  return { items, total };
}

export const fleetSummary = () => get("fleet/summary");
export const listDevices = (params = {}) => all("devices", { sort: "name", ...params });
export const listJobs = (params = {}, max = 1000) => all("jobs", params, max);
export const listVersions = (params = {}, max = 1000) => all("versions", params, max);
export const listRollouts = () => get("rollouts");
export const listPolicies = () => get("policies");
export const deviceDetail = (id, telemetryLimit = 500) =>
  get(`devices/${encodeURIComponent(id)}`, { telemetry_limit: telemetryLimit });

// ---- derived figures --------------------------------------------------------------------------
// Labelled accuracy = sum(correct) / sum(labelled); estimated = mean of the records' estimates:
// the definitions of the fleet summary (control_plane/services/fleet.py).
export function accuracyOf(records) {
  let labelled = 0;
  let correct = 0;
  let estSum = 0;
  let estN = 0;
  for (const r of records) {
    labelled += r.labelled_count;
    correct += r.labelled_correct;
    if (r.estimated_accuracy !== null && r.estimated_accuracy !== undefined) {
      estSum += r.estimated_accuracy;
      estN += 1;
    }
  }
  return { labelled: labelled ? correct / labelled : null, estimated: estN ? estSum / estN : null, records: records.length };
}

export function recentAccuracy(telemetry, now = Date.now() / 1000, windowS = ACCURACY_WINDOW_S) {
  return accuracyOf(telemetry.filter((r) => toEpoch(r.received_at) >= now - windowS));
}

// Latest job per device from a job list ordered newest first.
export function latestJobByDevice(jobs) {
  const out = new Map();
  for (const j of jobs) if (j.device_id && !out.has(j.device_id)) out.set(j.device_id, j);
  return out;
}

// Per-record series of one device: accuracy, estimate and compression of the version it ran.
export function deviceSeries(telemetry, ratioOf) {
  const labelled = [];
  const estimated = [];
  const compression = [];
  const markers = [];
  let prev;
  for (const r of telemetry) {
    const t = r.window_end;
    if (r.labelled_count > 0) labelled.push([t, r.labelled_correct / r.labelled_count]);
    if (r.estimated_accuracy !== null) estimated.push([t, r.estimated_accuracy]);
    const ratio = r.deployed_version ? ratioOf(r.deployed_version) : null;
    if (ratio !== null && ratio !== undefined) compression.push([t, ratio]);
    if (prev !== undefined && r.deployed_version !== prev) {
      markers.push({ t, label: r.deployed_version ? shortVersion(r.deployed_version) : "dense" });
    }
    prev = r.deployed_version;
  }
  return { labelled, estimated, compression, markers };
}

// Fleet series: telemetry of many devices in time buckets; labelled = pooled correct / labelled,
// estimated = mean estimate, compression = mean ratio of the versions the records ran.
export function fleetSeries(telemetryByDevice, ratioOf, buckets = 60) {
  const recs = telemetryByDevice.flat();
  if (!recs.length) return { labelled: [], estimated: [], compression: [] };
  let lo = Infinity;
  let hi = -Infinity;
  for (const r of recs) {
    lo = Math.min(lo, r.window_end);
    hi = Math.max(hi, r.window_end);
  }
  const width = Math.max(1, (hi - lo) / buckets);
  const acc = new Map();
  for (const r of recs) {
    const b = Math.min(buckets - 1, Math.floor((r.window_end - lo) / width));
    let a = acc.get(b);
    if (!a) acc.set(b, (a = { labelled: 0, correct: 0, est: 0, estN: 0, ratio: 0, ratioN: 0 }));
    a.labelled += r.labelled_count;
    a.correct += r.labelled_correct;
    if (r.estimated_accuracy !== null) {
      a.est += r.estimated_accuracy;
      a.estN += 1;
    }
    const ratio = r.deployed_version ? ratioOf(r.deployed_version) : null;
    if (ratio !== null && ratio !== undefined) {
      a.ratio += ratio;
      a.ratioN += 1;
    }
  }
  const keys = [...acc.keys()].sort((x, y) => x - y);
  const t = (b) => lo + (b + 1) * width;
  return {
    labelled: keys.filter((b) => acc.get(b).labelled).map((b) => [t(b), acc.get(b).correct / acc.get(b).labelled]),
    estimated: keys.filter((b) => acc.get(b).estN).map((b) => [t(b), acc.get(b).est / acc.get(b).estN]),
    compression: keys.filter((b) => acc.get(b).ratioN).map((b) => [t(b), acc.get(b).ratio / acc.get(b).ratioN]),
  };
}

export function shortVersion(id) {
  if (!id) return "";
  return id.length > 22 ? `…${id.slice(-18)}` : id;
}

// Per-unit importance of the latest version, when the API exposes it in a version's metrics
// (`metrics.importance`: list of numbers, or {layer: [numbers]}).
export function importanceOf(versions) {
  for (const v of versions) {
    const imp = v.metrics && v.metrics.importance;
    if (Array.isArray(imp) && imp.length) return { version: v.id, layer: null, values: imp };
    if (imp && typeof imp === "object") {
      const [layer, values] = Object.entries(imp).find(([, x]) => Array.isArray(x) && x.length) || [];
      if (layer) return { version: v.id, layer, values };
    }
  }
  return null;
}

// MLflow links: the API gives each version's run page (`mlflow_url`, built from the server's
// FLEET_MLFLOW_UI_URL); the compare view lives under the same UI.
export function mlflowCompareUrl(versions) {
  const withRuns = versions.filter((v) => v.mlflow_run_id && v.mlflow_url);
  if (withRuns.length < 2) return null;
  const m = withRuns[0].mlflow_url.match(/^(.*?)\/#\/experiments\/([^/]+)\/runs\//);
  if (!m) return null;
  const runs = JSON.stringify(withRuns.map((v) => v.mlflow_run_id));
  const exps = JSON.stringify([...new Set(withRuns.map((v) => v.mlflow_url.match(/experiments\/([^/]+)\//)[1]))]);
  return `${m[1]}/#/compare-runs?runs=${encodeURIComponent(runs)}&experiments=${encodeURIComponent(exps)}`;
}
