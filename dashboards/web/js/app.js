// App shell: hash router, session (key + role), navigation and the live-update loop.
// A page module exports `mount(view, params, ctx) -> {refresh(): Promise, destroy()}`; the shell
// calls refresh() on every tick so the page updates in place without reloading.

import { ApiError, clearKey, getKey, getSession, setSession } from "./api.js";
import { whoami } from "./model.js";
import { h, refreshAgo, replace, toast } from "./ui.js";
import * as fleet from "./pages/fleet.js";
import * as device from "./pages/device.js";
import * as jobs from "./pages/jobs.js";
import * as versions from "./pages/versions.js";
import * as rollouts from "./pages/rollouts.js";
import * as policies from "./pages/policies.js";
import * as login from "./pages/login.js";

const ROUTES = [
  { re: /^\/login$/, page: login, nav: null, open: true },
  { re: /^\/fleet$/, page: fleet, nav: "fleet" },
  { re: /^\/devices\/([^/]+)$/, page: device, nav: "fleet", params: ["deviceId"] },
  { re: /^\/jobs$/, page: jobs, nav: "jobs" },
  { re: /^\/versions$/, page: versions, nav: "versions" },
  { re: /^\/rollouts$/, page: rollouts, nav: "rollouts" },
  { re: /^\/policies$/, page: policies, nav: "policies" },
];

// How often pages refresh, ms. `?poll=<ms>` in the URL overrides it (tests use a short one).
const POLL_MS = Number(new URLSearchParams(location.search).get("poll")) || 5000;

const state = {
  session: null, // {role, name, canAct}
  current: null, // {page, handle, key}
  timer: null,
  lastUpdate: null,
  busy: false,
};

const ctx = {
  get session() {
    return state.session;
  },
  navigate(hash) {
    location.hash = hash;
  },
  // Pages call this after an action so the new state shows at once, not on the next tick.
  refreshNow: () => tick(true),
  setTitle(text) {
    document.title = text ? `${text} · QSAE Fleet` : "QSAE Fleet";
  },
};

function parseRoute() {
  const path = (location.hash || "#/fleet").replace(/^#/, "").split("?")[0] || "/fleet";
  for (const r of ROUTES) {
    const m = path.match(r.re);
    if (m) {
      const params = {};
      (r.params || []).forEach((name, i) => (params[name] = decodeURIComponent(m[i + 1])));
      return { route: r, params, key: path };
    }
  }
  return null;
}

function showBanner(text) {
  const b = document.getElementById("banner");
  if (!text) {
    b.hidden = true;
    return;
  }
  replace(b, text);
  b.hidden = false;
}

function setLive(ok, text) {
  const live = document.getElementById("live");
  live.classList.toggle("stale", !ok);
  replace(document.getElementById("live-text"), text);
}

async function ensureSession() {
  if (state.session) return state.session;
  if (!getKey()) return null;
  state.session = getSession();
  if (state.session) return state.session;
  try {
    state.session = await whoami();
    setSession(state.session);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      clearKey();
      return null;
    }
    throw err;
  }
  return state.session;
}

function renderChrome() {
  const s = state.session;
  document.getElementById("nav").hidden = !s;
  document.getElementById("session").hidden = !s;
  document.body.classList.toggle("can-act", Boolean(s && s.canAct));
  document.body.classList.toggle("read-only", Boolean(s && !s.canAct));
  if (s) {
    replace(document.getElementById("role"), s.name ? `${s.name} · ${s.role}` : s.role);
  }
}

async function route() {
  const parsed = parseRoute();
  if (!parsed) {
    location.hash = "#/fleet";
    return;
  }
  let session = null;
  try {
    session = await ensureSession();
  } catch (err) {
    showBanner(`Cannot reach the control plane: ${err.message}`);
  }
  if (!session && !parsed.route.open) {
    const back = location.hash && !location.hash.startsWith("#/login") ? location.hash : "#/fleet";
    sessionStorage.setItem("qsae.afterLogin", back);
    location.hash = "#/login";
    return;
  }
  if (session && parsed.route.page === login) {
    location.hash = "#/fleet";
    return;
  }
  renderChrome();
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === parsed.route.nav);
  }
  if (state.current) state.current.handle.destroy?.();
  const view = document.getElementById("view");
  replace(view);
  showBanner(null);
  const handle = parsed.route.page.mount(view, parsed.params, ctx);
  state.current = { page: parsed.route.page, handle, key: parsed.key };
  await tick(true);
}

async function tick(force = false) {
  const cur = state.current;
  if (!cur || !cur.handle.refresh) return;
  if (state.busy && !force) return;
  if (document.hidden && !force) return;
  state.busy = true;
  try {
    await cur.handle.refresh();
    if (state.current !== cur) return;
    refreshAgo();
    state.lastUpdate = Date.now();
    setLive(true, "live");
    showBanner(null);
  } catch (err) {
    if (state.current !== cur) return;
    if (err instanceof ApiError && err.status === 401) return; // handled by the unauthorized listener
    setLive(false, "stale");
    showBanner(err instanceof ApiError && err.status === 0
      ? `Cannot reach the control plane; retrying every ${POLL_MS / 1000} s.`
      : `Could not load this page: ${err.message}`);
  } finally {
    state.busy = false;
  }
}

function logout(message) {
  clearKey();
  state.session = null;
  renderChrome();
  if (message) toast(message, "error");
  location.hash = "#/login";
}

window.addEventListener("qsae:unauthorized", () => {
  if (state.session) logout("Your key was rejected (revoked or expired); sign in again.");
});
window.addEventListener("qsae:login", (ev) => {
  state.session = ev.detail;
  const next = sessionStorage.getItem("qsae.afterLogin") || "#/fleet";
  sessionStorage.removeItem("qsae.afterLogin");
  location.hash = next;
});
window.addEventListener("hashchange", route);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) tick();
});
document.getElementById("logout").addEventListener("click", () => logout());

function start() {
  state.timer = setInterval(() => tick(), POLL_MS);
  route();
}

// uPlot is a deferred classic script; modules run after deferred scripts, so it is there already.
if (typeof uPlot === "undefined") {
  replace(document.getElementById("view"), h("p", { class: "error" }, "Chart library failed to load."));
} else {
  start();
}
