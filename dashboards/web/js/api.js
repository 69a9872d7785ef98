// The operator API client: same origin, `Authorization: Bearer <key>`, key kept in sessionStorage
// (gone when the tab closes). Every call goes through `request`, so errors look the same everywhere.

const KEY_STORAGE = "qsae.apiKey";
const SESSION_STORAGE = "qsae.session"; // {role, name, canAct} learnt at sign-in (display only)
export const API_BASE = new URL("../api/v1/", document.baseURI).pathname;

export class ApiError extends Error {
  constructor(status, detail, path) {
    super(detail || `HTTP ${status}`);
    this.status = status; // HTTP status, 0 when the server could not be reached
    this.detail = detail; // the API's `detail`, a sentence a person can act on
    this.path = path;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_STORAGE, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  sessionStorage.removeItem(SESSION_STORAGE);
}

// The role only decides what the UI offers; the API checks it on every request anyway.
export function getSession() {
  try {
    return JSON.parse(sessionStorage.getItem(SESSION_STORAGE) || "null");
  } catch {
    return null;
  }
}

export function setSession(session) {
  sessionStorage.setItem(SESSION_STORAGE, JSON.stringify(session));
}

function detailOf(body, status) {
  if (!body) return `HTTP ${status}`;
  const d = body.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) {
    // FastAPI validation errors: [{loc, msg}, ...]
    return d.map((e) => `${(e.loc || []).slice(1).join(".") || "body"}: ${e.msg}`).join("; ");
  }
  return JSON.stringify(body);
}

export async function request(method, path, { params, body, key } = {}) {
  const url = new URL(path.replace(/^\//, ""), new URL(API_BASE, location.origin));
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => url.searchParams.append(k, x));
    else url.searchParams.set(k, v);
  }
  const headers = { Accept: "application/json" };
  const token = key ?? getKey();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, `control plane unreachable (${err.message})`, path);
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text };
    }
  }
  if (!res.ok) {
    const err = new ApiError(res.status, detailOf(data, res.status), path);
    if (res.status === 401) window.dispatchEvent(new CustomEvent("qsae:unauthorized", { detail: err }));
    throw err;
  }
  return data;
}

export const get = (path, params, opts) => request("GET", path, { ...opts, params });
export const post = (path, body, opts) => request("POST", path, { ...opts, body: body ?? {} });
export const put = (path, body, opts) => request("PUT", path, { ...opts, body: body ?? {} });
export const del = (path, opts) => request("DELETE", path, opts);
