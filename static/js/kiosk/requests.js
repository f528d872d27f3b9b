// The kiosk's "Connection requests" card: who asks, what they say they are, when; Approve or
// Deny (POST /connections/{id}/approve|deny).
import { api } from "../api.js";
import { $, h } from "../dom.js";
import { upsertConnection } from "../connections.js";
import { toPerson } from "../relationships.js";
import { when } from "../threads.js";

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
      const name = c.family_name || "Someone";
      const says = toPerson(c.relationship);
      const asked = c.requested_at || c.updated_at;
      const approve = h("button", { type: "button", class: "primary", "aria-label": `Approve ${name}` }, "Approve");
      const deny = h("button", { type: "button", class: "danger", "aria-label": `Deny ${name}` }, "Deny");
      approve.addEventListener("click", () => this.decide(c, "approve", approve, deny));
      deny.addEventListener("click", () => this.decide(c, "deny", approve, deny));
      return h("li", { class: "request", dataset: { connection: c.id } },
        h("div", { class: "who-asks" },
          h("p", {}, h("strong", {}, name), " wants to connect"),
          h("p", { class: "muted" },
            says ? h("span", { class: "relationship" }, `Says they are ${says}. `)
                 : h("span", { class: "relationship" }, "Did not say how they know you. "),
            "Asked ", h("time", { datetime: asked }, when(asked)), ".")),
        h("span", { class: "row" }, approve, deny));
    }));
    if (!pending.length) list.append(h("li", { class: "muted" }, "No requests."));
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
