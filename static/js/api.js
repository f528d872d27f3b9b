// fetch for /api/v1 (docs/API.md): JSON in and out, the session cookie, errors thrown as
// ApiError {status, code, message, details}, and Idempotency-Key for anything that moves credits.

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

/** A fresh idempotency key (crypto.randomUUID needs a secure context: https or localhost). */
export function newKey() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * api("POST", "/purchases", {body, key, headers}) -> the parsed JSON body.
 * `key: true` makes a new Idempotency-Key; pass a string to retry with the same one.
 */
export async function api(method, path, { body, key, headers } = {}) {
  const h = { Accept: "application/json", ...(headers || {}) };
  if (body !== undefined) h["Content-Type"] = "application/json";
  if (key) h["Idempotency-Key"] = key === true ? newKey() : key;
  let resp;
  try {
    resp = await fetch("/api/v1" + path, {
      method, headers: h, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "network", "The server could not be reached. Check your connection.");
  }
  let data = null;
  const text = await resp.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!resp.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(resp.status, e.code || `http_${resp.status}`,
                       e.message || `The server answered ${resp.status}.`, e.details);
  }
  return data;
}

/** Whole credits and cents as money: 650 -> "$6.50". */
export function dollars(cents) {
  return `$${(cents / 100).toFixed(2)}`;
}

/** A tiny element builder: h("li", {class: "x", onclick}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Show a message in a live region (role=status / role=alert). */
export function say(el, text, kind = "info") {
  el.textContent = text || "";
  el.dataset.kind = kind;
}

/** The e-mail sign-in form (#login-form, #login-email, #login-password, #login-notice) of the
 * family app and the staff console: sign in, then `start()`; errors go to the notice. */
export function bindEmailLogin(start) {
  const $ = (id) => document.getElementById(id);
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    say($("login-notice"), "");
    try {
      await api("POST", "/auth/login", { body: { email: $("login-email").value.trim(),
                                                 password: $("login-password").value } });
      await start();
    } catch (err) {
      say($("login-notice"), err.message, "error");
    }
  });
}
