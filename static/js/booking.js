// The family's "Visits" tab (docs/clients.md, "Video visits"): a week of the facility's blocks
// for a contact (7 days from the facility's today, GET /facilities/{id}/slots for each), each
// block showing how many of its minutes the balance covers (a block under way offers only the
// minutes left of it: the server's `minutes_left`), greyed when it covers none or no kiosk is
// free; a confirmation dialog stating the block (facility time, labelled), its length and the
// price before booking (POST /visits, one Idempotency-Key per confirmation); the family's
// visits with Join and Cancel, and the call screen.
import { api, newKey } from "./api.js";
import { $, dollars, h, say } from "./dom.js";
import { spanText, zoneLabel } from "./time.js";
import { VisitCall } from "./visit.js";
import { wallDay, wallTime } from "./visit/screen.js";
import { loadVisits, renderVisitList } from "./visit_list.js";
import { reachable } from "./family/contacts.js";
import { t } from "./i18n.js";

const DAYS_SHOWN = 7;
const REFRESH_MS = 60_000; // the block under way loses a minute a minute: the grid follows

function addDays(day, n) {
  const d = new Date(`${day}T12:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

export class FamilyVisits {
  /** `store`: the page's balance and connections (store.js); `socket`: for the call. */
  constructor({ store, socket }) {
    this.store = store;
    this.socket = socket;
    this.visits = new Map();
    this.week = null; // the last slots answers, one a day: [{date, timezone, slots, ...}]
    this.call = null;
    this.build();
    store.watch("balance", (n) => this.setBalance(n));
    // The grid is refetched every minute while it is on screen (a block under way shrinks,
    // other families book), never during a call.
    this.refresher = setInterval(() => {
      if (!this.call && !this.el.week.closest("[hidden]") && !this.dialog.open) this.loadSlots().catch(() => {});
    }, REFRESH_MS);
  }

  build() {
    const root = $("visits-root");
    this.el = {
      contact: h("select", { id: "book-contact" }),
      info: h("p", { class: "muted", id: "book-info", role: "status" }),
      week: h("div", { class: "week", id: "slots", role: "group", "aria-labelledby": "slots-h",
                       "aria-describedby": "slots-keys" }),
      notice: h("p", { class: "notice", role: "alert", id: "book-notice" }),
      list: h("ul", { class: "plain", id: "visit-list", "aria-labelledby": "my-visits-h" }),
    };
    const e = this.el;
    e.contact.addEventListener("change", () => this.loadSlots());
    // One Tab stop for the whole week (up to ~180 blocks): the arrow keys move inside it.
    e.week.addEventListener("keydown", (ev) => this.moveInWeek(ev));
    e.week.addEventListener("focusin", (ev) => {
      if (ev.target.matches("button.slot")) this.tabStop(ev.target);
    });
    // The family's own visits first: the week holds up to ~180 blocks, and a keyboard user
    // should not have to Tab through all of them to reach Join or Cancel.
    root.replaceChildren(
      h("h3", { id: "my-visits-h" }, t("visits.yours")),
      e.list,
      h("h3", {}, t("book.title")),
      h("div", { class: "row" },
        h("div", {}, h("label", { for: "book-contact" }, t("book.with")), e.contact)),
      e.info, e.notice, // above the week, so "Booked: ..." is seen without scrolling
      h("h4", { id: "slots-h" }, t("book.next_days", { n: DAYS_SHOWN })),
      h("p", { class: "muted", id: "slots-keys" }, t("book.keys")),
      e.week);
    this.buildDialog();
  }

  /** The confirmation: what is booked, when (facility time), how long, and what it costs. */
  buildDialog() {
    const d = {
      box: h("dialog", { class: "confirm", id: "book-dialog", "aria-labelledby": "book-dialog-h",
                         "aria-describedby": "book-dialog-what" }),
      what: h("p", { id: "book-dialog-what" }),
      when: h("dd", { id: "book-dialog-when" }),
      length: h("dd", { id: "book-dialog-length" }),
      price: h("dd", { id: "book-dialog-price" }),
      covers: h("p", { id: "book-dialog-covers" }),
      notice: h("p", { class: "notice", role: "alert", id: "book-dialog-notice" }),
      back: h("button", { type: "button", id: "book-dialog-back" }, t("book.keep_looking")),
      ok: h("button", { type: "submit", class: "primary", id: "book-dialog-ok" }, t("book.ok")),
    };
    const form = h("form", { method: "dialog" },
      h("h2", { id: "book-dialog-h" }, t("book.confirm_title")),
      d.what,
      h("dl", { class: "facts" },
        h("div", {}, h("dt", {}, t("book.when")), d.when),
        h("div", {}, h("dt", {}, t("book.length")), d.length),
        h("div", {}, h("dt", {}, t("book.price_label")), d.price)),
      d.covers, d.notice,
      h("div", { class: "row" }, h("div", {}, d.back), h("div", {}, d.ok)));
    form.addEventListener("submit", (ev) => { ev.preventDefault(); this.confirm(); });
    d.back.addEventListener("click", () => d.box.close());
    d.box.addEventListener("close", () => { this.pending = null; this.restoreFocus(); });
    d.box.append(form);
    document.body.append(d.box);
    this.dialog = d.box;
    this.d = d;
  }

  contacts() {
    return reachable(this.store.get("connections"));
  }

  nameOf(v) {
    const c = [...this.store.get("connections").values()].find((x) => x.id === v.connection_id);
    return (c && c.person_name) || t("contact.yours_lower");
  }

  renderContacts() {
    const sel = this.el.contact;
    const was = sel.value;
    const list = this.contacts();
    sel.replaceChildren(...list.map((c) => h("option", { value: c.id }, c.person_name || t("contact.unnamed"))));
    if (list.some((c) => c.id === was)) sel.value = was;
    sel.disabled = !list.length;
  }

  /** Everything over HTTP (start, sync reset). */
  async load() {
    this.renderContacts();
    this.visits = new Map((await loadVisits()).map((v) => [v.id, v]));
    this.renderList();
    await this.loadSlots();
  }

  async loadSlots() {
    const c = this.contacts().find((x) => x.id === this.el.contact.value);
    if (!c) {
      this.week = null;
      this.el.week.replaceChildren();
      say(this.el.info, t("book.connect_first"));
      return;
    }
    const path = `/facilities/${encodeURIComponent(c.facility_id)}/slots`;
    let week;
    try {
      // Today as the server sees it at the facility (not the browser's date), then 6 more.
      const today = await api("GET", path);
      const rest = await Promise.all(Array.from({ length: DAYS_SHOWN - 1 }, (_, i) =>
        api("GET", `${path}?date=${addDays(today.date, i + 1)}`).catch((err) =>
          (err.code === "beyond_horizon" ? null : Promise.reject(err)))));
      week = [today, ...rest.filter(Boolean)];
    } catch (err) {
      say(this.el.notice, err.message, "error");
      return;
    }
    if (this.el.contact.value !== c.id) return; // another contact was chosen meanwhile
    this.week = week;
    this.renderSlots();
  }

  /** Whole minutes the balance pays for (null: visits are free here). */
  covered() {
    const g = this.week && this.week[0];
    if (!g || !g.minute_price) return null;
    return Math.floor(this.store.get("balance") / g.minute_price);
  }

  renderSlots() {
    if (!this.week) return;
    const g = this.week[0];
    const covered = this.covered();
    const zone = t("book.zone", { zone: g.timezone, label: zoneLabel(`${g.date}T12:00:00Z`, g.timezone) });
    say(this.el.info, covered === null ? `${t("book.free_here")} ${zone}`
      : `${t("book.minute_price", { price: g.minute_price })} ${t("book.covers", { balance: this.store.get("balance"), n: covered })} ${zone}`);
    const had = document.activeElement?.closest?.("#slots") ? document.activeElement.dataset.start : null;
    this.el.week.replaceChildren(...this.week.map((day, i) => this.renderDay(day, i === 0, covered)));
    const buttons = [...this.el.week.querySelectorAll("button.slot")];
    const again = had && buttons.find((b) => b.dataset.start === had && !b.disabled);
    this.tabStop(again || buttons.find((b) => !b.disabled) || null);
    if (again) again.focus(); // a refresh under the keyboard keeps its place
  }

  /** Focus back where the dialog was opened from. The week may have been drawn again while
   * it was open (the minute's refresh, a balance push): then the same block's new button. */
  restoreFocus() {
    let target = this.returnFocus;
    if (target && !target.isConnected && target.dataset.start) {
      target = this.el.week.querySelector(`button.slot[data-start="${target.dataset.start}"]`);
    }
    target?.focus();
  }

  /** The week's one Tab stop (roving tabindex). */
  tabStop(btn) {
    for (const b of this.el.week.querySelectorAll("button.slot")) b.tabIndex = b === btn ? 0 : -1;
  }

  /** Arrow keys in the week: up and down a day's times, left and right to the neighbouring
   * day's nearest time; Home and End to a day's first and last. Greyed blocks are skipped. */
  moveInWeek(ev) {
    const btn = ev.target.closest && ev.target.closest("button.slot");
    if (!btn || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const days = [...this.el.week.querySelectorAll("section.week-day")]
      .map((d) => [...d.querySelectorAll("button.slot")]);
    const col = days.findIndex((d) => d.includes(btn));
    const row = days[col].indexOf(btn);
    const open = (b) => b && !b.disabled;
    let next = null;
    if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      const step = ev.key === "ArrowDown" ? 1 : -1;
      for (let r = row + step; r >= 0 && r < days[col].length && !next; r += step) if (open(days[col][r])) next = days[col][r];
    } else if (ev.key === "Home" || ev.key === "End") {
      const list = ev.key === "Home" ? days[col] : [...days[col]].reverse();
      next = list.find(open) || null;
    } else if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
      const step = ev.key === "ArrowRight" ? 1 : -1;
      for (let c = col + step; c >= 0 && c < days.length && !next; c += step) {
        // The same time of day if that day has it, else the nearest open one.
        const same = days[c].find((b) => open(b) && b.textContent.startsWith(btn.querySelector("strong").textContent));
        next = same || days[c].filter(open).sort((a, b) =>
          Math.abs(days[c].indexOf(a) - row) - Math.abs(days[c].indexOf(b) - row))[0] || null;
      }
    } else {
      return;
    }
    ev.preventDefault();
    if (next) {
      this.tabStop(next);
      next.focus();
      next.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
  }

  renderDay(day, isToday, covered) {
    const id = `day-${day.date}`;
    const title = isToday ? t("book.today", { day: wallDay(day.date) }) : wallDay(day.date);
    const list = h("ul", { class: "slots", "aria-labelledby": id });
    list.replaceChildren(...day.slots.map((s) => h("li", {}, this.slotButton(day, s, covered))));
    if (!day.slots.length) list.append(h("li", { class: "muted" }, t("book.no_times")));
    return h("section", { class: "week-day", dataset: { date: day.date } },
      h("h5", { id }, title), list);
  }

  slotButton(day, s, covered) {
    const name = this.el.contact.selectedOptions[0]?.textContent || t("contact.yours_lower");
    const span = `${wallTime(s.start, day.timezone)}–${wallTime(s.end, day.timezone)}`;
    const left = s.minutes_left ?? day.block_minutes;
    const mins = covered === null ? left : Math.min(covered, left);
    const why = !s.free ? t("book.full") : covered !== null && mins < 1 ? t("book.buy_to_book") : null;
    const length = left < day.block_minutes ? t("book.min_left", { n: left }) : t("book.min", { n: left });
    const cover = covered === null ? t("book.free_length", { length }) : t("book.covers_of", { n: mins, length });
    const btn = h("button", {
      type: "button", class: "slot", disabled: Boolean(why), "aria-haspopup": "dialog",
      dataset: { start: s.start, covered: String(mins), left: String(left), free: String(s.free) },
      "aria-label": why ? `${wallDay(day.date)} ${span}: ${why}`
        : t("book.slot_label", { span, name, day: wallDay(day.date), cover, n: s.free }),
    }, h("strong", {}, span), h("span", { class: "sub" }, why || cover),
    h("span", { class: "sub" }, t("book.free_kiosks", { n: s.free })));
    btn.addEventListener("click", () => this.ask(day, s, btn));
    return btn;
  }

  /** Open the confirmation for a block: nothing is booked until the family confirms. */
  ask(day, slot, btn) {
    const d = this.d;
    const name = this.el.contact.selectedOptions[0]?.textContent || t("contact.yours_lower");
    const left = slot.minutes_left ?? day.block_minutes;
    const price = day.minute_price;
    const covered = this.covered();
    this.pending = { slot, key: newKey(), connection: this.el.contact.value };
    this.returnFocus = btn;
    d.what.textContent = t("book.what", { name });
    d.when.textContent = `${spanText(slot.start, slot.end, day.timezone)}`;
    d.length.textContent = left < day.block_minutes
      ? t("book.length_under_way", { n: left, block: day.block_minutes })
      : t("book.minutes", { n: left });
    if (!price) {
      d.price.textContent = t("book.free");
      d.covers.textContent = "";
    } else {
      const most = price * left;
      d.price.textContent = t("book.price", { price, most, dollars: dollars(most), n: left });
      const mins = Math.min(covered, left);
      d.covers.textContent = mins >= left
        ? t("book.covers_all", { balance: this.store.get("balance") })
        : t("book.covers_part", { balance: this.store.get("balance"), n: mins });
    }
    d.ok.textContent = price ? t("book.ok_up_to", { n: price * left }) : t("book.ok");
    d.ok.disabled = false;
    say(d.notice, "");
    this.dialog.showModal();
    d.back.focus(); // the safe choice first: Enter does not book by accident
  }

  async confirm() {
    const p = this.pending;
    if (!p) return;
    const d = this.d;
    d.ok.disabled = true;
    say(d.notice, t("book.booking"));
    try {
      // The same key for every try of this confirmation: a double tap books once.
      const r = await api("POST", "/visits", { key: p.key,
                                               body: { connection_id: p.connection, start: p.slot.start } });
      const v = r.visit;
      this.visits.set(v.id, v);
      this.renderList();
      this.returnFocus = this.el.list.querySelector(`[data-visit="${v.id}"] button`) || this.returnFocus;
      this.dialog.close();
      say(this.el.notice, t("book.booked", { when: spanText(v.start, v.end, v.timezone), name: this.nameOf(v) }), "ok");
    } catch (err) {
      d.ok.disabled = false;
      say(d.notice, err.message, "error");
      return;
    }
    await this.loadSlots();
  }

  async cancel(v, btn) {
    btn.disabled = true;
    try {
      const r = await api("POST", `/visits/${encodeURIComponent(v.id)}/cancel`);
      this.visits.set(v.id, r.visit);
      say(this.el.notice, t("book.cancelled", { time: `${wallTime(v.start, v.timezone)} ${zoneLabel(v.start, v.timezone)}` }), "ok");
      this.renderList();
      await this.loadSlots();
    } catch (err) {
      btn.disabled = false;
      say(this.el.notice, err.message, "error");
    }
  }

  renderList() {
    renderVisitList(this.el.list, this.visits.values(), {
      nameOf: (v) => this.nameOf(v), onJoin: (v) => this.join(v),
      onCancel: (v, btn) => this.cancel(v, btn), empty: t("visits.none_yet"),
    });
  }

  join(v) {
    if (this.call && !this.call.ended) return;
    const app = $("app");
    app.hidden = true;
    this.call = new VisitCall({
      root: $("visit-screen"), socket: this.socket, visit: v, side: "family",
      peer: this.nameOf(v), balance: this.store.get("balance"),
      creditsForm: $("buy-form"), // "Add credits" in the call: the same purchase form
      onClose: () => {
        app.hidden = false;
        this.call = null;
        this.el.list.closest("section")?.querySelector("h2")?.setAttribute("tabindex", "-1");
        this.el.list.closest("section")?.querySelector("h2")?.focus();
        this.load().catch(() => {});
      },
    });
    window.kinwireVisit = this.call; // for tests and the curious
    this.call.start();
  }

  setBalance(n) {
    this.renderSlots();
    if (this.call) this.call.setBalance(n); // a top-up during the call keeps it going
  }

  onEvent(type, data) {
    if (type === "visit.updated") {
      this.visits.set(data.id, data);
      this.renderList();
    } else if (type === "connection.updated") {
      this.renderContacts();
      if (!this.week) this.loadSlots().catch(() => {});
    }
    if (this.call) this.call.onEvent(type, data);
  }
}
