// The chat model and view shared by the family app and the kiosk: messages kept by id (so a
// push and a reload never show one twice), one thread per contact, bubbles with their status.
import { api } from "./api.js";
import { $, h } from "./dom.js";
import { photoThumbs } from "./photo_viewer.js";
import { whenText } from "./time.js";
import { t } from "./i18n.js";

export class Inbox {
  constructor(meId) {
    this.me = meId;
    this.byId = new Map();
  }
  clear() {
    this.byId.clear();
  }
  upsert(msg) {
    const old = this.byId.get(msg.id);
    this.byId.set(msg.id, old ? { ...old, ...msg } : msg);
  }
  other(msg) {
    return msg.from === this.me ? msg.to : msg.from;
  }
  thread(otherId) {
    return [...this.byId.values()]
      .filter((m) => this.other(m) === otherId)
      .sort((a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1
                       : a.id < b.id ? -1 : 1));
  }
  unread(otherId) {
    return this.thread(otherId).filter((m) => m.from !== this.me && !m.opened_at).length;
  }
  last(otherId) {
    const t = this.thread(otherId);
    return t[t.length - 1];
  }
}

/** A time as people read it: the one format (time.js), in `zone` (the home zone by default). */
export function when(iso, zone) {
  return whenText(iso, zone);
}

/** One message as a list item. `onOpen(msg)` pays for and opens a locked COD message; its
 * photos (ids only when the server lets this reader see them) show as thumbnails, described
 * as from `fromName` when given. */
export function bubble(msg, me, { onOpen, fromName, zone } = {}) {
  const mine = msg.from === me;
  const status = [];
  if (mine) {
    if (msg.status === "held") status.push(h("span", { class: "badge held" }, t("message.held")));
    else if (msg.status === "rejected") {
      status.push(h("span", { class: "badge rejected" },
                    msg.reject_reason ? t("message.rejected_why", { why: msg.reject_reason }) : t("message.rejected")));
    } else if (msg.opened_at) status.push(h("span", { class: "badge read", "data-receipt": "read" }, t("message.read")));
    else status.push(h("span", { class: "badge sent", "data-receipt": "delivered" }, t("message.delivered")));
    if (msg.cod) status.push(h("span", { class: "badge" }, t("message.cod")));
    else if (msg.price) status.push(h("span", { class: "price" }, t("credits.n", { n: msg.price })));
  } else if (msg.cod) {
    status.push(h("span", { class: "badge" }, msg.locked ? t("message.collect") : t("message.collect_paid")));
  }
  let content;
  if (msg.locked) {
    const price = msg.price; // what opening it costs: the server's figure, never a copy
    content = h("div", { class: "locked" },
      h("span", { class: "lock-icon", "aria-hidden": "true" }),
      h("span", {}, t("message.locked")),
      onOpen ? h("button", { type: "button", class: "pay-open", onclick: () => onOpen(msg) },
                 t("message.pay_open", { n: price })) : null);
  } else {
    content = h("p", { class: "body" }, msg.body || "");
    if (msg.photo_count && !(msg.photo_ids || []).length) {
      content.append(h("span", { class: "photos" }, t("message.photo_count", { n: msg.photo_count })));
    }
  }
  const ids = (!msg.locked && msg.photo_ids) || [];
  return h("li", { class: `msg ${mine ? "mine" : "theirs"}`, dataset: { id: msg.id, status: msg.status } },
    content,
    ids.length ? photoThumbs(ids, mine ? null : fromName) : null,
    h("div", { class: "meta" }, h("time", { datetime: msg.created_at }, when(msg.created_at, zone)), " ", ...status));
}

export function connectionState() {
  return h("span", { class: "conn", role: "status", "aria-live": "polite", "data-socket-state": "connecting" },
           t("socket.connecting"));
}

// Both apps' conversations over HTTP (at start and after a sync reset): the messages into
// `inbox` (emptied first); returns {balance, connections (a Map by id), historyComplete}.
export async function loadConversations(inbox) {
  const [me, conns, received, sent] = await Promise.all([
    api("GET", "/me"), api("GET", "/connections"),
    api("GET", "/messages?folder=inbox"), api("GET", "/messages?folder=sent")]);
  inbox.clear();
  for (const m of [...received.messages, ...sent.messages]) inbox.upsert(m);
  return { balance: me.balance, connections: new Map(conns.connections.map((c) => [c.id, c])),
           historyComplete: !received.next_before && !sent.next_before }; // nothing older to fetch
}

// Typing indicators (live only, never stored; the `typing {to}` op). Both apps: `send(to)` from
// the compose box's input events, `heard(from)` on a `typing` push, `done(from)` when that
// person's message arrives; `render()` writes "<name> is typing…" for the open thread into `el`.
// `socket()` is the page's socket (once there is one), `current()` the person whose thread is
// open, `nameOf(id)` what to call them.
const TYPING_EVERY_MS = 3000; // at most one `typing` a contact per this
const TYPING_SHOWN_MS = 6000; // the other side's indicator fades after this without news

export class Typing {
  constructor(el, { socket, current, nameOf }) {
    this.el = el;
    this.socket = socket;
    this.current = current;
    this.nameOf = nameOf;
    this.sentAt = 0;
    this.until = new Map(); // account id -> when its indicator fades
  }
  send(to) {
    const s = this.socket();
    if (!s || s.state !== "online" || !to || Date.now() - this.sentAt < TYPING_EVERY_MS) return;
    this.sentAt = Date.now();
    s.request("typing", { to }).catch(() => {}); // best effort by design
  }
  heard(from) {
    this.until.set(from, Date.now() + TYPING_SHOWN_MS);
    this.render();
    setTimeout(() => this.render(), TYPING_SHOWN_MS + 50);
  }
  done(from) {
    if (this.until.delete(from)) this.render();
  }
  render() {
    const who = this.current();
    this.el.textContent = (this.until.get(who) || 0) > Date.now() ? t("messages.typing", { name: this.nameOf(who) }) : "";
  }
}

/**
 * What the family's Messages tab and the kiosk's inbox share: the open thread (`current`), its
 * typing indicator (#typing), pushed messages applied to the Inbox, and delivered messages
 * marked read once shown on a visible page. Each app's subclass draws: renderThreads() and
 * renderThread().
 */
export class Conversations {
  /** `me`: the account; `inbox`: its Inbox; `socket`: for typing; `nameOf(id)`: a contact's name. */
  constructor({ me, inbox, socket, nameOf }) {
    this.me = me;
    this.inbox = inbox;
    this.current = null; // the contact whose thread is open
    this.opening = new Set(); // messages being marked read
    this.typing = new Typing($("typing"), { socket: () => socket, current: () => this.current, nameOf });
  }

  /** A push: typing, message.new, message.status (others are not the inbox's). */
  onEvent(type, data) {
    if (type === "typing") {
      this.typing.heard(data.from);
      return;
    }
    if (type === "message.new") this.typing.done(data.from);
    if (type === "message.new" || type === "message.status") {
      this.inbox.upsert(data);
      this.renderThreads();
      if (this.current === this.inbox.other(data)) this.renderThread();
    }
  }

  /** Open (POST /messages/{id}/open: the sender sees "Read") what was delivered to us. */
  markRead(msgs) {
    if (document.visibilityState === "hidden") return;
    for (const m of msgs) {
      if (m.from === this.me.id || m.opened_at || m.locked || m.status !== "delivered" || this.opening.has(m.id)) continue;
      this.opening.add(m.id);
      api("POST", `/messages/${encodeURIComponent(m.id)}/open`)
        .then((r) => { this.inbox.upsert(r.message); })
        .catch(() => {})
        .finally(() => this.opening.delete(m.id));
    }
  }
}
