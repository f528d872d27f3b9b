// The facility's settings in the staff console (GET /facilities/{id}; PATCH by administrators,
// only what changed, so the audit entry says what this person did). A refused value is
// explained beside its field.
import { api } from "../api.js";
import { $, h, say } from "../dom.js";

const NUMBERS = ["kiosks", "booking_horizon_days", "cancel_cutoff_minutes"];
const PRICES = ["message", "photo", "visit_minute"];

export class FacilitySettings {
  /** `admin`: whether this reader may change them; `audit` (audit.js) is read again after a
   * save; `onSaved(facility)` with the server's new copy. */
  constructor({ admin, audit, onSaved }) {
    Object.assign(this, { admin, audit, onSaved });
    this.facility = null; // the facility shown
    $("settings-form").addEventListener("submit", (ev) => { ev.preventDefault(); this.save(); });
  }

  show(f) {
    this.facility = f;
    const st = f.settings;
    $("set-review_mode").value = st.review_mode;
    $("set-review_photos").checked = Boolean(st.review_photos);
    $("set-keywords").value = (st.keywords || []).join("\n");
    for (const k of PRICES) $(`set-price-${k}`).value = st.prices[k];
    $("set-visit_block_minutes").value = String(st.visit_block_minutes);
    $("set-hours-start").value = st.visit_hours.start;
    $("set-hours-end").value = st.visit_hours.end;
    for (const k of NUMBERS) $(`set-${k}`).value = st[k];
    $("set-media").value = st.media;
    $("set-record_visits").checked = Boolean(st.record_visits);
    $("settings-fields").disabled = !this.admin;
    $("settings-save").hidden = !this.admin;
    $("settings-who").textContent = this.admin
      ? `${f.name} (${f.timezone}). Changes apply at once and are written to the audit log.`
      : `${f.name} (${f.timezone}). Only an administrator can change these settings.`;
  }

  form() {
    const num = (id) => Number($(id).value);
    return {
      review_mode: $("set-review_mode").value,
      review_photos: $("set-review_photos").checked,
      keywords: $("set-keywords").value.split(/[\n,]/).map((w) => w.trim()).filter(Boolean),
      prices: Object.fromEntries(PRICES.map((k) => [k, num(`set-price-${k}`)])),
      visit_block_minutes: num("set-visit_block_minutes"),
      visit_hours: { start: $("set-hours-start").value, end: $("set-hours-end").value },
      ...Object.fromEntries(NUMBERS.map((k) => [k, num(`set-${k}`)])),
      media: $("set-media").value,
      record_visits: $("set-record_visits").checked,
    };
  }

  async save() {
    const f = this.facility;
    const next = this.form();
    // Send only what changed, so the audit entry says what this person did.
    const changed = Object.fromEntries(Object.entries(next).filter(
      ([k, v]) => JSON.stringify(v) !== JSON.stringify(f.settings[k])));
    if (!Object.keys(changed).length) {
      say($("settings-notice"), "Nothing changed.");
      return;
    }
    $("settings-save").disabled = true;
    clearFieldErrors();
    try {
      const r = await api("PATCH", `/facilities/${encodeURIComponent(f.id)}`, { body: { settings: changed } });
      this.onSaved(r.facility);
      this.show(r.facility);
      say($("settings-notice"), `Saved: ${Object.keys(changed).map((k) => k.replace(/_/g, " ")).join(", ")}.`, "ok");
      await this.audit.load();
    } catch (err) {
      showFieldErrors((err.details && err.details.fields) || []);
      say($("settings-notice"), err.message, "error");
    } finally {
      $("settings-save").disabled = false;
    }
  }
}

// A refused setting is explained beside its field (the server's words: "Visiting hours must
// start before they end."), and the field is marked invalid for screen readers.
function fieldInput(path) {
  const [top, sub] = path.split(".");
  if (top === "prices") return $(`set-price-${sub}`);
  if (top === "visit_hours") return $(sub === "start" ? "set-hours-start" : "set-hours-end");
  return $(`set-${top}`);
}

function clearFieldErrors() {
  for (const p of document.querySelectorAll("#settings-form p.field-error")) p.remove();
  for (const el of document.querySelectorAll("#settings-form [aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    el.removeAttribute("aria-describedby");
  }
}

function showFieldErrors(fields) {
  clearFieldErrors();
  for (const f of fields) {
    const input = fieldInput(f.field);
    if (!input || input.getAttribute("aria-invalid")) continue;
    const id = `err-${input.id}`;
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", id);
    (input.closest("label.check") || input).after(h("p", { class: "field-error", id }, f.problem));
  }
}
