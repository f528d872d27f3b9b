// The "Find a person" tab: a facility and a name or inmate number (GET
// /facilities/{id}/people?q=), "Request connection" (POST /connections) with what the family
// member is to the person, and the family's connections with each one's status.
import { api } from "../api.js";
import { $, h, say } from "../dom.js";
import { RELATIONSHIPS } from "../relationships.js";
import { upsertConnection } from "../connections.js";
import { contactOf, statusText } from "./contacts.js";
import { t } from "../i18n.js";

export class FindPerson {
  /** `store`: the page's connections; `facilities`: GET /facilities, a Map by id. */
  constructor({ store, facilities }) {
    this.store = store;
    $("find-facility").replaceChildren(...[...facilities.values()].map((f) => h("option", { value: f.id }, f.name)));
    $("find-relationship").append(...RELATIONSHIPS.map((code) => h("option", { value: code }, t(`relationship.${code}`))));
    $("find-form").addEventListener("submit", (ev) => { ev.preventDefault(); this.search(); });
    store.watch("connections", () => this.renderConnections());
  }

  async search() {
    say($("find-notice"), "");
    const list = $("find-results");
    list.replaceChildren();
    try {
      const fid = $("find-facility").value;
      const r = await api("GET", `/facilities/${encodeURIComponent(fid)}/people?q=${encodeURIComponent($("find-q").value.trim())}`);
      if (!r.people.length) say($("find-notice"), t("find.nobody"));
      list.append(...r.people.map((p) => this.result(p)));
    } catch (err) {
      say($("find-notice"), err.message, "error");
    }
  }

  /** One person found, with "Request connection" (or where their connection stands). */
  result(p) {
    const existing = contactOf(this.store.get("connections"), p.id);
    const btn = h("button", { type: "button", class: "primary", disabled: Boolean(existing) },
                  existing ? statusText(existing) : t("find.request"));
    btn.setAttribute("aria-label", existing ? `${p.name}: ${statusText(existing)}` : t("find.request_with", { name: p.name }));
    btn.addEventListener("click", async () => {
      btn.disabled = true;
      try {
        const relationship = $("find-relationship").value || undefined;
        const c = await api("POST", "/connections", { body: { person_id: p.id, relationship } });
        upsertConnection(this.store, c.connection);
        btn.textContent = statusText(c.connection);
        say($("find-notice"), t("find.sent", { name: p.name }), "ok");
      } catch (err) {
        btn.disabled = false;
        say($("find-notice"), err.message, "error");
      }
    });
    return h("li", {}, h("span", {}, h("strong", {}, p.name), ` · #${p.inmate_number}`), btn);
  }

  renderConnections() {
    const connections = [...this.store.get("connections").values()];
    const list = $("connections");
    list.replaceChildren(...connections.map((c) =>
      h("li", { dataset: { connection: c.id, status: c.status } },
        h("span", {}, c.person_name || c.person_id), h("span", { class: "badge" }, statusText(c)))));
    if (!connections.length) list.append(h("li", { class: "muted" }, t("find.none")));
  }
}
