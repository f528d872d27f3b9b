// A user's visits (docs/clients.md, "Video visits"): when, with whom, status or why it ended,
// Join while active and (families) Cancel while booked; and the kiosk's "Video visits" card.
import { api } from "./api.js";
import { $, h } from "./dom.js";
import { spanText } from "./time.js";
import { ACTIVE, VisitCall } from "./visit.js";
import { endedText, recordingNotice, wallTime } from "./visit/screen.js";
import { has, t } from "./i18n.js";


/**
 * A user's visits: when, with whom, status; Join for the active ones, Cancel for booked ones
 * when `onCancel` is given (families). `nameOf(visit)` names the other party.
 */
export function renderVisitList(list, visits, { nameOf, onJoin, onCancel, empty = t("visits.none") }) {
  const shown = [...visits].sort((a, b) => a.start.localeCompare(b.start));
  list.replaceChildren(...shown.map((v) => {
    const who = nameOf(v);
    const when = spanText(v.start, v.end, v.timezone);
    const status = v.end_reason && !ACTIVE.has(v.status)
      ? endedText(v.end_reason, { payer: "the" }) : (has(`visit.status.${v.status}`) ? t(`visit.status.${v.status}`) : v.status);
    const actions = [];
    if (ACTIVE.has(v.status) && onJoin) {
      actions.push(h("button", { type: "button", class: "primary", "aria-label": t("visits.join_with", { name: who, time: wallTime(v.start, v.timezone) }),
                                 onclick: () => onJoin(v) }, t("visits.join")));
    }
    if (v.status === "scheduled" && onCancel) {
      actions.push(h("button", { type: "button", class: "danger", "aria-label": t("visits.cancel_with", { name: who, time: wallTime(v.start, v.timezone) }),
                                 onclick: (ev) => onCancel(v, ev.currentTarget) }, t("visits.cancel")));
    }
    // Told before joining: shown on every visit that can still be joined.
    const notice = ACTIVE.has(v.status)
      ? h("span", { class: "muted visit-recording-notice", "data-recording-notice": v.id }, recordingNotice(v)) : null;
    return h("li", { dataset: { visit: v.id, status: v.status } },
      h("span", {}, h("strong", {}, when), ` · ${who} · `, h("span", { class: "badge", "data-visit-status": v.status }, status)),
      notice,
      actions.length ? h("span", { class: "row" }, ...actions) : null);
  }));
  if (!shown.length) list.append(h("li", { class: "muted" }, empty));
}

/** The list API call both apps use: visits from 12 hours ago on, soonest first. */
export async function loadVisits() {
  const from = new Date(Date.now() - 12 * 3600 * 1000).toISOString();
  const r = await api("GET", `/visits?from=${encodeURIComponent(from)}`);
  return r.visits;
}

/** The kiosk's "Video visits" card: the person's visits with Join, and the call screen. */
export class KioskVisits {
  /** `store`: the page's connections (store.js); `socket`: for the call; `list`, `screen`,
   * `app`: the card's list, the call's screen and what the call hides. */
  constructor({ store, socket, list, screen, app }) {
    Object.assign(this, { store, socket, list, screen, app });
    this.visits = new Map();
    this.call = null;
  }

  nameOf(v) {
    const c = [...this.store.get("connections").values()].find((x) => x.id === v.connection_id);
    return (c && c.family_name) || t("visits.your_visitor");
  }

  async load() {
    this.visits = new Map((await loadVisits()).map((v) => [v.id, v]));
    this.render();
  }

  render() {
    renderVisitList(this.list, this.visits.values(), {
      nameOf: (v) => this.nameOf(v), onJoin: (v) => this.join(v), empty: t("visits.none"),
    });
  }

  join(v) {
    if (this.call && !this.call.ended) return;
    this.app.hidden = true;
    this.call = new VisitCall({ root: this.screen, socket: this.socket, visit: v, side: "person",
                                peer: this.nameOf(v), onClose: () => {
                                  this.app.hidden = false;
                                  this.call = null;
                                  $("kiosk-visits-h")?.setAttribute("tabindex", "-1");
                                  $("kiosk-visits-h")?.focus();
                                } });
    window.kinwireVisit = this.call; // for tests and the curious
    this.call.start();
  }

  onEvent(type, data) {
    if (type === "visit.updated") {
      this.visits.set(data.id, data);
      this.render();
    }
    if (this.call) this.call.onEvent(type, data);
  }
}
