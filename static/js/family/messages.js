// The Messages tab: one thread per contact (threads.js keeps the messages by id), the open
// thread with its bubbles, refunds, "Show older messages" and the typing indicator, and the
// compose box with its price, photos (photos.js) and the balance after sending.
import { api, newKey, upload } from "../api.js";
import { $, h, say } from "../dom.js";
import { Conversations, bubble } from "../threads.js";
import { zoneOf } from "../time.js";
import { contactOf, pricesOf, statusText } from "./contacts.js";
import { Attachments } from "./photos.js";
import { t } from "../i18n.js";

const OLDER_PAGE = 20;
const isOlder = (a, b) => a.created_at < b.created_at || (a.created_at === b.created_at && a.id < b.id);

export class Messages extends Conversations {
  /**
   * `me`: the family's account; `inbox`: its threads.js Inbox; `store`: the page's balance and
   * connections; `socket`: for typing; `pricing` (GET /pricing) and `facilities` (a Map by
   * id, each with its own prices, if any): what a message costs.
   */
  constructor({ me, inbox, store, socket, pricing, facilities }) {
    super({ me, inbox, socket, nameOf: (id) => (this.contact(id) || {}).person_name || t("contact.yours") });
    Object.assign(this, { store, pricing, facilities });
    this.historyComplete = false; // the first load held every message (no older page exists)
    this.olderDone = new Set(); // contacts whose whole history is loaded
    this.sendKey = null; // kept across retries of one send
    this.photos = new Attachments({ max: pricing.photos_per_message_max,
                                    onChange: () => { this.sendKey = null; this.renderCompose(); } });
    $("thread-back").addEventListener("click", () => this.back());
    $("thread-older").addEventListener("click", () => this.loadOlder());
    $("compose").addEventListener("submit", (ev) => { ev.preventDefault(); this.send(); });
    $("compose-body").addEventListener("input", () => { this.sendKey = null; this.sendTyping(); });
    $("compose-body").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) $("compose").requestSubmit();
    });
    store.watch("balance", () => this.renderCompose());
    store.watch("connections", () => this.renderThreads());
  }

  contact(personId) {
    return contactOf(this.store.get("connections"), personId);
  }

  /** The prices of the person's facility: its own, else the server's defaults. */
  pricesFor(personId) {
    return pricesOf(this.contact(personId), this.pricing, this.facilities);
  }

  /** The inbox was loaded afresh (threads.js loadConversations). */
  reloaded(historyComplete) {
    this.historyComplete = historyComplete;
    this.renderThreads();
    this.renderThread();
  }

  renderThreads() {
    const list = $("threads");
    const contacts = [...this.store.get("connections").values()];
    $("no-threads").hidden = contacts.length > 0;
    list.replaceChildren(...contacts.map((c) => {
      const unread = this.inbox.unread(c.person_id);
      const last = this.inbox.last(c.person_id);
      const sub = c.status !== "approved" ? statusText(c) : last ? (last.locked ? t("message.collect") : (last.body || "").slice(0, 40)) : t("messages.none_yet");
      const btn = h("button", { type: "button", "aria-current": String(this.current === c.person_id),
                                dataset: { person: c.person_id } },
        h("span", {}, h("strong", {}, c.person_name || t("contact.unnamed")), h("br"), h("span", { class: "sub" }, sub)),
        unread ? h("span", { class: "count", "aria-label": t("messages.unread", { n: unread }) }, unread) : null);
      btn.addEventListener("click", () => this.open(c.person_id));
      return h("li", {}, btn);
    }));
  }

  open(personId) {
    if (this.current !== personId) this.photos.clear();
    this.current = personId;
    this.renderThreads();
    this.renderThread();
    $("compose-body").focus();
  }

  // On a phone the open thread takes the contact list's place (app.css); Back brings the list
  // back, focus on the contact just left.
  back() {
    const left = this.current;
    this.current = null;
    this.renderThreads();
    this.renderThread();
    const btn = [...$("threads").querySelectorAll("button")].find((b) => b.dataset.person === left);
    if (btn) btn.focus();
  }

  renderThread(keepScroll = false) {
    const personId = this.current;
    $("thread").hidden = !personId;
    $("chat").classList.toggle("in-thread", Boolean(personId));
    if (!personId) return;
    const c = this.contact(personId);
    $("thread-h").textContent = c ? `${c.person_name || t("contact.unnamed")} · ${statusText(c)}` : "";
    const msgs = this.inbox.thread(personId);
    const list = $("messages");
    const fromName = c ? c.person_name : null;
    const zone = c ? zoneOf(c.facility_id) : undefined; // the contact's facility's clock
    const onOpen = (m) => this.payToOpen(m);
    list.replaceChildren(...msgs.map((m) => this.withRefund(bubble(m, this.me.id, { onOpen, fromName, zone }), m)));
    if (!msgs.length) list.append(h("li", { class: "muted" }, t("messages.none")));
    if (!keepScroll) list.scrollTop = list.scrollHeight;
    // Hidden when the first load already holds the whole history (no older page exists).
    $("thread-older").hidden = this.historyComplete || this.olderDone.has(personId) || !msgs.length;
    this.typing.render();
    this.markRead(msgs);
    this.renderCompose();
  }

  /** For a rejected paid message, the refund beside its bubble. */
  withRefund(li, msg) {
    if (msg.from === this.me.id && msg.status === "rejected" && !msg.cod && msg.price) {
      li.querySelector(".meta").append(h("span", { class: "badge refund", "data-refund": msg.price },
                                         t("message.refunded", { n: msg.price })));
    }
    return li;
  }

  async payToOpen(msg) {
    say($("compose-notice"), "");
    try {
      const r = await api("POST", `/messages/${encodeURIComponent(msg.id)}/open`);
      this.inbox.upsert(r.message);
      this.renderThread();
    } catch (err) {
      say($("compose-notice"), err.code === "insufficient_credits" ? t("message.open_short") : err.message, "error");
    }
  }

  renderCompose() {
    if (!this.current) return;
    const balance = this.store.get("balance");
    const c = this.contact(this.current);
    const prices = this.pricesFor(this.current);
    const n = this.photos.items.length;
    const price = prices.message + prices.photo * n;
    const approved = c && c.status === "approved" && !c.blocked;
    $("compose").hidden = !approved;
    const short = balance < price;
    const parts = n ? t("compose.photo_parts", { message: prices.message, n, photo: prices.photo }) : "";
    $("compose-price").textContent = short
      ? t("compose.short", { n: price, parts, balance })
      : t("compose.price", { n: price, parts, after: balance - price });
    $("compose-body").required = n === 0;
    $("send").textContent = t("compose.send_n", { n: price });
    $("send").disabled = short;
  }

  async send() {
    const body = $("compose-body").value;
    const attached = this.photos.items;
    if ((!body.trim() && !attached.length) || !this.current) return;
    $("send").disabled = true;
    this.sendKey = this.sendKey || newKey();
    try {
      // Each photo is uploaded once; a retry after a failed send reuses the ids already known.
      for (const [i, a] of attached.entries()) {
        if (a.photoId) continue;
        say($("compose-notice"), t("compose.uploading", { i: i + 1, n: attached.length }));
        a.photoId = (await upload("/photos", a.file)).photo_id;
      }
      const photo_ids = attached.map((a) => a.photoId);
      const r = await api("POST", "/messages", { key: this.sendKey, body: { to: this.current, body, photo_ids } });
      this.sendKey = null;
      this.inbox.upsert(r.message);
      this.photos.clear();
      $("compose-body").value = "";
      say($("compose-notice"), "");
      this.renderThread();
    } catch (err) {
      if (err.status && err.status < 500) this.sendKey = null;
      say($("compose-notice"), err.message, "error");
    } finally {
      this.renderCompose();
    }
  }

  sendTyping() {
    const c = this.current && this.contact(this.current);
    if (c && c.status === "approved" && $("compose-body").value) this.typing.send(this.current);
  }

  // Older messages of the open thread (GET /messages?with=, both folders).
  async loadOlder() {
    const personId = this.current;
    const t = this.inbox.thread(personId); // oldest first
    const anchors = { inbox: t.find((m) => m.from === personId && m.status === "delivered"),
                      sent: t.find((m) => m.from === this.me.id) };
    const url = (folder) => `/messages?folder=${folder}&with=${encodeURIComponent(personId)}&limit=${OLDER_PAGE}`
      + (anchors[folder] ? `&before=${encodeURIComponent(anchors[folder].id)}` : "");
    $("thread-older").disabled = true;
    try {
      const [inbox, sent] = await Promise.all([api("GET", url("inbox")), api("GET", url("sent"))]);
      // A folder with more pages leaves a gap below its oldest row: keep only what is newer than
      // that, so the thread never shows a hole; the next click fetches the rest.
      let floor = null;
      for (const page of [inbox, sent]) {
        const last = page.messages.at(-1);
        if (page.next_before && last && (!floor || isOlder(floor, last))) floor = last;
      }
      const fresh = [...inbox.messages, ...sent.messages].filter((m) => !this.inbox.byId.has(m.id)
        && (!floor || !isOlder(m, floor)));
      for (const m of fresh) this.inbox.upsert(m);
      if (!inbox.next_before && !sent.next_before) this.olderDone.add(personId);
      say($("compose-notice"), fresh.length ? "" : t("messages.no_older"));
      this.renderThread(true);
    } catch (err) {
      say($("compose-notice"), err.message, "error");
    } finally {
      $("thread-older").disabled = false;
    }
  }
}
