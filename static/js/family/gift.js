// The "Give credits" tab (POST /gifts, to an approved, unblocked contact): the balance after
// giving before the button, which says how many and is disabled beyond the balance.
import { api, newKey } from "../api.js";
import { $, h, say } from "../dom.js";
import { reachable } from "./contacts.js";
import { t } from "../i18n.js";

export class Gift {
  /** `store`: the page's balance and connections; `pricing`: GET /pricing (the gift maximum). */
  constructor({ store, pricing }) {
    this.store = store;
    this.pricing = pricing;
    this.key = null; // kept across retries of one gift
    $("gift-to").addEventListener("change", () => { this.key = null; this.render(); });
    $("gift-credits").addEventListener("input", () => { this.key = null; this.render(); });
    $("gift-form").addEventListener("submit", (ev) => { ev.preventDefault(); this.give(); });
    store.watch("balance", () => this.render());
    store.watch("connections", () => this.render());
  }

  shown() {
    this.render();
  }

  render() {
    const balance = this.store.get("balance");
    const sel = $("gift-to");
    const chosen = sel.value;
    const contacts = reachable(this.store.get("connections"));
    sel.replaceChildren(...contacts.map((c) => h("option", { value: c.person_id }, c.person_name || t("contact.unnamed"))));
    if (chosen) sel.value = chosen;
    $("gift-none").hidden = contacts.length > 0;
    $("gift-form").hidden = !contacts.length;
    const max = this.pricing.gift_credits_max;
    $("gift-credits").max = String(Math.min(balance, max || balance));
    const n = Number($("gift-credits").value) || 0;
    const short = n > balance;
    $("gift-summary").textContent = n
      ? (short ? t("gift.have", { n: balance }) : t("gift.after", { n: balance - n })) : "";
    $("gift-send").disabled = !n || short;
    $("gift-send").textContent = n ? t("gift.give_n", { n }) : t("gift.give");
  }

  async give() {
    const to = $("gift-to").value;
    const credits = Number($("gift-credits").value);
    if (!to || !Number.isInteger(credits) || credits < 1) return;
    const name = $("gift-to").selectedOptions[0].textContent;
    $("gift-send").disabled = true;
    this.key = this.key || newKey();
    try {
      const r = await api("POST", "/gifts", { key: this.key, body: { to, credits } });
      this.key = null;
      this.store.set("balance", r.balance);
      $("gift-credits").value = "";
      say($("gift-notice"), t("gift.gave", { n: credits, name }), "ok");
    } catch (err) {
      if (err.status && err.status < 500) this.key = null;
      say($("gift-notice"), err.message, "error");
    } finally {
      this.render();
    }
  }
}
