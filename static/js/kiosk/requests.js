// The kiosk's "Connection requests" card: who asks, what they say they are, when; Approve or
// Deny (POST /connections/{id}/approve|deny).
import { api } from "../api.js";
import { $, h } from "../dom.js";
import { upsertConnection } from "../connections.js";
import { toPerson } from "../relationships.js";
import { when } from "../threads.js";
import { parts, t } from "../i18n.js";

export class Requests {
  /** `store`: the page's connections. */
  constructor({ store }) {
    this.store = store;
    store.watch("connections", () => this.render());
  }

  render() {
    const pending = [...this.store.get("connections").values()].filter((c) => c.status === "requested")
      .sort((a, b) => (a.requested_at < b.requested_at ? -1 : 1)); // oldest first
    const list = $("requests");
    list.replaceChildren(...pending.map((c) => {
      const name = c.family_name || t("kiosk.someone");
      const says = toPerson(c.relationship);
      const asked = c.requested_at || c.updated_at;
      const approve = h("button", { type: "button", class: "primary", "aria-label": t("kiosk.approve_name", { name }) }, t("kiosk.approve"));
      const deny = h("button", { type: "button", class: "danger", "aria-label": t("kiosk.deny_name", { name }) }, t("kiosk.deny"));
      approve.addEventListener("click", () => this.decide(c, "approve", approve, deny));
      deny.addEventListener("click", () => this.decide(c, "deny", approve, deny));
      return h("li", { class: "request", dataset: { connection: c.id } },
        h("div", { class: "who-asks" },
          h("p", {}, ...parts("kiosk.wants", { name: h("strong", {}, name) })),
          h("p", { class: "muted" },
            h("span", { class: "relationship" },
              says ? t("kiosk.says", { who: says }) : t("kiosk.did_not_say")), " ",
            ...parts("kiosk.asked", { when: h("time", { datetime: asked }, when(asked)) }))),
        h("span", { class: "row" }, approve, deny));
    }));
    if (!pending.length) list.append(h("li", { class: "muted" }, t("kiosk.no_requests")));
  }

  async decide(c, action, ...buttons) {
    for (const b of buttons) b.disabled = true;
    try {
      const r = await api("POST", `/connections/${encodeURIComponent(c.id)}/${action}`);
      upsertConnection(this.store, r.connection || { ...c, status: action === "approve" ? "approved" : "denied" });
    } catch (err) {
      for (const b of buttons) b.disabled = false;
      alert(err.message);
    }
  }
}
