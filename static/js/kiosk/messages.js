// The kiosk's "Messages" card: one thread per approved contact, the open thread, and the
// reply box (collect when the balance is short: the family pays to open it).
import { api, newKey } from "../api.js";
import { $, h, say } from "../dom.js";
import { Conversations, bubble } from "../threads.js";
import { t } from "../i18n.js";

export class KioskMessages extends Conversations {
  /** `me`: the person's account; `inbox`: a threads.js Inbox; `store`: the page's balance and
   * connections; `socket`: for typing; `prices`: what the person's facility charges. */
  constructor({ me, inbox, store, socket, prices }) {
    super({ me, inbox, socket, nameOf: (id) => (this.contact(id) || {}).family_name || t("contact.yours") });
    Object.assign(this, { store, prices });
    this.sendKey = null; // kept across retries of one send
    $("compose").addEventListener("submit", (ev) => { ev.preventDefault(); this.send(false); });
    $("send-cod").addEventListener("click", () => this.send(true));
    $("compose-body").addEventListener("input", () => {
      this.sendKey = null;
      if ($("compose-body").value) this.typing.send(this.current);
    });
    store.watch("balance", () => this.renderCompose());
    store.watch("connections", () => { this.renderThreads(); this.renderThread(); });
  }

  contact(familyId) {
    return [...this.store.get("connections").values()].find((c) => c.family_id === familyId);
  }

  renderThreads() {
    const contacts = [...this.store.get("connections").values()].filter((c) => c.status === "approved");
    $("no-threads").hidden = contacts.length > 0;
    $("threads").replaceChildren(...contacts.map((c) => {
      const unread = this.inbox.unread(c.family_id);
      const btn = h("button", { type: "button", "aria-current": String(this.current === c.family_id),
                                dataset: { family: c.family_id } },
        h("strong", {}, c.family_name || t("contact.unnamed")),
        unread ? h("span", { class: "count", "aria-label": t("messages.unread", { n: unread }) }, unread) : null);
      btn.addEventListener("click", () => {
        this.current = c.family_id;
        this.renderThreads();
        this.renderThread();
        $("compose-body").focus();
      });
      return h("li", {}, btn);
    }));
  }

  async payToOpen(msg) {
    try {
      const r = await api("POST", `/messages/${encodeURIComponent(msg.id)}/open`);
      this.inbox.upsert(r.message);
      this.renderThread();
    } catch (err) {
      say($("compose-notice"), err.message, "error");
    }
  }

  renderThread() {
    const id = this.current;
    $("thread").hidden = !id;
    if (!id) return;
    const c = this.contact(id);
    $("thread-h").textContent = c ? (c.family_name || t("contact.unnamed")) : "";
    const msgs = this.inbox.thread(id);
    const fromName = c ? c.family_name : null;
    const onOpen = (m) => this.payToOpen(m);
    $("messages").replaceChildren(...msgs.map((m) => bubble(m, this.me.id, { onOpen, fromName })));
    if (!msgs.length) $("messages").append(h("li", { class: "muted" }, t("messages.none")));
    $("messages").scrollTop = $("messages").scrollHeight;
    this.typing.render();
    this.markRead(msgs);
    this.renderCompose();
  }

  renderCompose() {
    if (!this.current) return;
    const balance = this.store.get("balance");
    const price = this.prices.message;
    const short = balance < price;
    $("send").textContent = t("compose.send_n", { n: price });
    $("send").disabled = short;
    $("send-cod").hidden = !short;
    $("compose-price").textContent = short
      ? t("kiosk.short", { balance, n: price })
      : t("compose.price", { n: price, parts: "", after: balance - price });
  }

  async send(cod) {
    const body = $("compose-body").value;
    if (!body.trim() || !this.current) return;
    $("send").disabled = $("send-cod").disabled = true;
    this.sendKey = this.sendKey || newKey();
    try {
      const r = await api("POST", "/messages", { key: this.sendKey, body: { to: this.current, body, cod } });
      this.sendKey = null;
      this.inbox.upsert(r.message);
      $("compose-body").value = "";
      say($("compose-notice"), cod ? t("kiosk.sent_cod") : "");
      this.renderThread();
    } catch (err) {
      if (err.status && err.status < 500) this.sendKey = null;
      say($("compose-notice"), err.message, "error");
    } finally {
      $("send-cod").disabled = false;
      this.renderCompose();
    }
  }
}
