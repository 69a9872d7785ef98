// Sign in with an API key: it is checked against the API, then kept in sessionStorage only.

import { ApiError, clearKey, setKey, setSession } from "../api.js";
import { whoami } from "../model.js";
import { h } from "../ui.js";

export function mount(view, params, ctx) {
  ctx.setTitle("Sign in");
  const input = h("input", {
    id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true,
    placeholder: "paste your API key", "data-testid": "api-key",
  });
  const error = h("p", { class: "error", role: "alert", "data-testid": "login-error", hidden: true });
  const button = h("button", { type: "submit", class: "primary", "data-testid": "login-submit" }, "Sign in");
  const form = h("form", { class: "login card", "data-testid": "login-form" },
    h("h1", {}, "QSAE Fleet"),
    h("p", { class: "muted" }, "Sign in with an operator API key. A viewer key shows everything and changes nothing."),
    h("label", { for: "api-key" }, "API key"),
    input,
    error,
    button);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    button.disabled = true;
    error.hidden = true;
    try {
      const session = await whoami(key);
      setKey(key);
      setSession(session);
      window.dispatchEvent(new CustomEvent("qsae:login", { detail: session }));
    } catch (err) {
      clearKey();
      error.textContent = err instanceof ApiError && (err.status === 401 || err.status === 403)
        ? "That key was not accepted (unknown or revoked)."
        : `Sign-in failed: ${err.message}`;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  view.append(form);
  input.focus();
  return { destroy() {} };
}
