// Small DOM helpers: an element builder (text is always set as text, never parsed as HTML),
// formatters, a sortable/filterable table, toasts and a confirm dialog.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// ---- formatting -------------------------------------------------------------------------------
export const DASH = "—";

export function pct(x, digits = 1) {
  return x === null || x === undefined || Number.isNaN(x) ? DASH : `${(x * 100).toFixed(digits)} %`;
}

export function ratio(x, digits = 1) {
  return x === null || x === undefined || Number.isNaN(x) ? DASH : `${Number(x).toFixed(digits)}×`;
}

export function num(x, digits = 3) {
  return x === null || x === undefined || Number.isNaN(x) ? DASH : Number(x).toFixed(digits);
}

export function int(x) {
  return x === null || x === undefined ? DASH : Number(x).toLocaleString("en-US");
}

// Timestamps from the API are epoch seconds or ISO strings; both become epoch seconds here.
export function toEpoch(t) {
  if (t === null || t === undefined || t === "") return null;
  if (typeof t === "number") return t > 1e12 ? t / 1000 : t;
  const ms = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(t) ? t : `${t}Z`);
  return Number.isNaN(ms) ? null : ms / 1000;
}

export function ago(t, now = Date.now() / 1000) {
  const s = toEpoch(t);
  if (s === null) return DASH;
  const d = Math.max(0, now - s);
  if (d < 60) return `${Math.round(d)} s ago`;
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${(d / 3600).toFixed(1)} h ago`;
  return `${(d / 86400).toFixed(1)} d ago`;
}

// A relative time that stays current: the shell re-labels every [data-ago] element on each tick,
// so tables need not re-render rows just because time passed.
export function agoEl(t) {
  const s = toEpoch(t);
  return h("span", { "data-ago": s ?? "", title: datetime(t) }, ago(t));
}

export function refreshAgo(root = document) {
  const now = Date.now() / 1000;
  for (const el of root.querySelectorAll("[data-ago]")) {
    if (el.dataset.ago !== "") el.textContent = ago(Number(el.dataset.ago), now);
  }
}

export function datetime(t) {
  const s = toEpoch(t);
  if (s === null) return DASH;
  return new Date(s * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${String(kind).replace(/[^\w-]/g, "_")}` }, text ?? DASH);
}

// ---- table ------------------------------------------------------------------------------------
// columns: [{key, label, value(row) -> sortable value, render(row) -> node|string, numeric}]
// Sort state lives in the table object so a refresh keeps the operator's choice. A row whose data
// did not change keeps its DOM element across refreshes (no flicker, no lost clicks); `extraSig`
// adds whatever else a row's rendering depends on.
export class DataTable {
  constructor({ columns, rowKey, testid, empty = "Nothing here yet.", onRowClick, sort, extraSig }) {
    this.columns = columns;
    this.rowKey = rowKey;
    this.extraSig = extraSig;
    this.rowCache = new Map(); // key -> {sig, tr}
    this.headSig = null;
    this.empty = empty;
    this.onRowClick = onRowClick;
    this.sort = sort || null; // {key, dir: 1|-1}
    this.rows = [];
    this.filter = () => true;
    this.el = h("div", { class: "table-wrap" });
    this.table = h("table", { class: "data", "data-testid": testid });
    this.el.append(this.table);
  }

  setRows(rows) {
    this.rows = rows || [];
    this.render();
  }

  setFilter(fn) {
    this.filter = fn;
    this.render();
  }

  value(col, row) {
    return col.value ? col.value(row) : row[col.key];
  }

  render() {
    const headSig = JSON.stringify(this.sort);
    if (headSig !== this.headSig) {
      this.headSig = headSig;
      this.thead = h("thead", {}, this.renderHead());
    }
    let rows = this.rows.filter(this.filter);
    if (this.sort) {
      const col = this.columns.find((c) => c.key === this.sort.key);
      if (col) {
        const dir = this.sort.dir;
        rows = [...rows].sort((a, b) => compare(this.value(col, a), this.value(col, b)) * dir);
      }
    }
    const cache = new Map();
    const trs = rows.map((row, i) => {
      const key = this.rowKey ? this.rowKey(row) : String(i);
      const sig = JSON.stringify(row) + (this.extraSig ? `|${this.extraSig(row)}` : "");
      const hit = this.rowCache.get(key);
      const tr = hit && hit.sig === sig ? hit.tr : this.renderRow(row, key);
      cache.set(key, { sig, tr });
      return tr;
    });
    this.rowCache = cache;
    const body = trs.length ? trs
      : [h("tr", {}, h("td", { colspan: this.columns.length, class: "empty" }, this.empty))];
    if (!this.tbody) this.tbody = h("tbody");
    // Only touch the DOM where the order or the rows changed.
    const current = [...this.tbody.children];
    if (current.length !== body.length || current.some((el, i) => el !== body[i])) this.tbody.replaceChildren(...body);
    if (this.table.firstChild !== this.thead || this.table.lastChild !== this.tbody) replace(this.table, this.thead, this.tbody);
    this.shown = rows.length;
  }

  renderHead() {
    return h("tr", {}, this.columns.map((col) => {
      const active = this.sort && this.sort.key === col.key;
      const arrow = active ? (this.sort.dir > 0 ? " ▲" : " ▼") : "";
      return h("th", {
        class: col.numeric ? "num" : "",
        "aria-sort": active ? (this.sort.dir > 0 ? "ascending" : "descending") : "none",
        "data-col": col.key,
      }, col.sortable === false ? col.label : h("button", {
        type: "button",
        class: "sort",
        onclick: () => {
          this.sort = { key: col.key, dir: active ? -this.sort.dir : 1 };
          this.render();
        },
      }, col.label + arrow));
    }));
  }

  renderRow(row, key) {
    const tr = h("tr", { "data-key": this.rowKey ? key : undefined },
      this.columns.map((col) => h("td", { class: col.numeric ? "num" : "", "data-col": col.key },
        col.render ? col.render(row) : fmtCell(this.value(col, row)))));
    if (this.onRowClick) {
      tr.classList.add("clickable");
      tr.addEventListener("click", (ev) => {
        if (ev.target.closest("a,button,input,select")) return;
        this.onRowClick(row);
      });
    }
    return tr;
  }
}

function fmtCell(v) {
  return v === null || v === undefined || v === "" ? DASH : String(v);
}

// null/undefined sort last whatever the direction is? Simpler and predictable: they sort as lowest.
function compare(a, b) {
  const na = a === null || a === undefined || a === "";
  const nb = b === null || b === undefined || b === "";
  if (na || nb) return na === nb ? 0 : na ? -1 : 1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), "en", { numeric: true });
}

// ---- feedback ---------------------------------------------------------------------------------
export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const t = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  box.append(t);
  setTimeout(() => t.remove(), kind === "error" ? 8000 : 4000);
}

// A modal built on <dialog>; resolves to the form's values (object) or null when cancelled.
export function formDialog({ title, body, fields = [], submit = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const inputs = {};
    const form = h("form", { method: "dialog", class: "dialog-form" },
      h("h2", {}, title),
      body ? h("p", {}, body) : null,
      fields.map((f) => {
        const input = f.options
          ? h("select", { name: f.name, required: f.required }, f.options.map((o) =>
            h("option", { value: o.value, selected: o.value === f.value }, o.label)))
          : h("input", {
            name: f.name, type: f.type || "text", value: f.value ?? "", required: f.required,
            step: f.step, min: f.min, max: f.max, placeholder: f.placeholder,
          });
        inputs[f.name] = input;
        return h("label", {}, h("span", {}, f.label), input, f.help ? h("small", {}, f.help) : null);
      }),
      h("div", { class: "dialog-actions" },
        h("button", { type: "button", class: "secondary", value: "cancel", onclick: () => dlg.close("cancel") },
          "Cancel"),
        h("button", { type: "submit", class: danger ? "danger" : "primary", value: "ok" }, submit)));
    const dlg = h("dialog", { class: "dialog" }, form);
    dlg.addEventListener("close", () => {
      const ok = dlg.returnValue === "ok";
      const values = {};
      for (const [k, input] of Object.entries(inputs)) values[k] = input.value;
      dlg.remove();
      resolve(ok ? values : null);
    });
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      dlg.close("ok");
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}
