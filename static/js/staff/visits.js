// The facility's visits in the staff console (12 hours either side of now): each with its
// status, its link's last quality, Watch for a relayed one in a call (watch.js) and End,
// confirmed in a dialog with a reason (written to the audit log).
import { api } from "../api.js";
import { $, h, say } from "../dom.js";
import { LINK_WORDS } from "../link_quality.js";
import { spanText } from "../time.js";

const IN_CALL = new Set(["open", "live", "paused"]);

export class Visits {
  /** `scoped(path)` adds an admin's facility; `names` (names.js); `audit` (audit.js), read
   * again after an End; `onWatch(v, who)` starts watching; `onEnded(v)` after staff ended one. */
  constructor({ scoped, names, audit, onWatch, onEnded }) {
    Object.assign(this, { scoped, names, audit, onWatch, onEnded });
    this.ending = null; // {v, who, button} while the dialog asks
    $("end-cancel").addEventListener("click", () => this.cancel());
    $("end-reason").addEventListener("input", () => say($("end-notice"), ""));
    $("end-form").addEventListener("submit", (ev) => { ev.preventDefault(); this.end(); });
    $("visits-refresh").addEventListener("click", () => this.load().catch((e) => say($("notice"), e.message, "error")));
  }

  async load() {
    const now = new Date();
    const from = new Date(now.getTime() - 12 * 3600e3).toISOString();
    const to = new Date(now.getTime() + 12 * 3600e3).toISOString();
    const r = await api("GET", this.scoped(`/visits?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`));
    await this.names.know(r.visits.flatMap((v) => [v.family_id, v.person_id]));
    $("visits-empty").hidden = r.visits.length > 0;
    $("visit-list").replaceChildren(...r.visits.map((v) => this.item(v)));
  }

  item(v) {
    const who = `${this.names.get(v.family_id)} and ${this.names.get(v.person_id)}`;
    let end = null;
    let watch = null;
    if (IN_CALL.has(v.status) && v.media === "relay") {
      watch = h("button", { type: "button", "aria-label": `Watch the visit of ${who}` }, "Watch");
      watch.addEventListener("click", () => this.onWatch(v, who));
    }
    if (IN_CALL.has(v.status)) {
      end = h("button", { type: "button", class: "danger", "aria-label": `End the visit of ${who}` }, "End");
      end.addEventListener("click", () => this.askToEnd(v, who, end));
    }
    // The kiosk's last word on the call's link (docs/visits.md, "Link quality"), in words.
    const link = IN_CALL.has(v.status) && v.link_quality
      ? h("span", { class: "visit-link", dataset: { level: v.link_quality } },
        `Link: ${LINK_WORDS[v.link_quality] || v.link_quality}${v.link_reason ? ` (${v.link_reason})` : ""}`)
      : null;
    return h("li", { dataset: { visit: v.id, status: v.status } },
      h("span", {}, h("strong", {}, who), h("br"),
        h("span", { class: "muted" }, `${spanText(v.start, v.end, v.timezone)} · ${v.media}`),
        link && [h("br"), link]),
      h("span", { class: `badge ${v.status === "live" ? "read" : ""}` },
        v.end_reason ? `${v.status} (${v.end_reason.replace(/_/g, " ")})` : v.status),
      watch, end);
  }

  askToEnd(v, who, button) {
    this.ending = { v, who, button };
    $("end-who").textContent = `The call of ${who} stops at once for both sides.`;
    $("end-reason").value = "";
    say($("end-notice"), "");
    $("end-dialog").showModal();
    $("end-reason").focus();
  }

  cancel() {
    $("end-dialog").close();
    if (this.ending) this.ending.button.focus();
    this.ending = null;
  }

  async end() {
    const reason = $("end-reason").value.trim();
    if (!reason) {
      say($("end-notice"), "Write why the visit is ended: the reason goes to the audit log.", "error");
      $("end-reason").focus();
      return;
    }
    const { v, who } = this.ending;
    $("end-confirm").disabled = true;
    try {
      await api("POST", `/visits/${encodeURIComponent(v.id)}/end`, { body: { reason } });
      $("end-dialog").close();
      this.ending = null;
      say($("notice"), `Ended the visit of ${who}.`, "ok");
      this.onEnded(v);
    } catch (err) {
      say($("end-notice"), err.message, "error");
    } finally {
      $("end-confirm").disabled = false;
    }
    await Promise.all([this.load(), this.audit.load()]).catch(() => {});
  }
}
