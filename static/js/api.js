// fetch for /api/v1 (docs/API.md): JSON in and out, the session cookie, errors thrown as
// ApiError {status, code, message, details}, Idempotency-Key for anything that moves credits, and
// multipart uploads (photos). The DOM helpers are in dom.js. An error's message is in the
// reader's language (i18n.js errorText: the catalogue's words for its stable code).
import { errorText } from "./i18n.js";

export class ApiError extends Error {
  /** `message`: the server's own words (kept as serverMessage); `prefix`: before either. */
  constructor(status, code, message, details, prefix = "") {
    super(prefix + errorText({ code, message: message || code }));
    this.status = status;
    this.code = code;
    this.details = details;
    this.serverMessage = message;
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
  const resp = await reach(path, {
    method, headers: h, body: body === undefined ? undefined : JSON.stringify(body),
  });
  return reply(resp);
}

/** upload("/photos", file) -> the parsed JSON body: the file as multipart `file`. An error
 * names the file, so that one of several uploads says which failed. */
export async function upload(path, file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const resp = await reach(path, { method: "POST", body: form });
  return reply(resp, `${file.name}: `);
}

async function reach(path, init) {
  try {
    return await fetch("/api/v1" + path, { ...init, credentials: "same-origin" });
  } catch {
    throw new ApiError(0, "network", "The server could not be reached. Check your connection.");
  }
}

/** The parsed JSON body, or an ApiError from the server's error body (`prefix` before its message). */
async function reply(resp, prefix = "") {
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
                       e.message || `The server answered ${resp.status}.`, e.details, prefix);
  }
  return data;
}
