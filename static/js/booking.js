// The family's "Visits" tab (docs/clients.md, "Video visits"): the facility's slot grid for a
// contact and a day (GET /facilities/{id}/slots), each block showing how many of its minutes the
// balance covers (balance // minute price) and greyed when it covers none or no kiosk is free;
// booking (POST /visits), the family's visits with Join and Cancel, and the call screen.
import { api, h, say } from "./api.js";
import { spanText, zoneLabel } from "./time.js";
import { VisitCall, wallDay, wallTime } from "./visit.js";
import { loadVisits, renderVisitList } from "./visit_list.js";

const DAYS_SHOWN = 7;

function addDays(day, n) {
  const d = new Date(`${day}T12:00:00Z`);
  d.setUTCDate(d.getUTCDate() + n);
  return d.toISOString().slice(0, 10);
}

export class FamilyVisits {
  constructor(state) {
    this.state = state;
    this.visits = new Map();
    this.grid = null; // the last slots answer
    this.today = null; // the facility's date, from the server (not the browser's clock)
    this.call = null;
    this.$ = (id) => document.getElementById(id);
    this.build();
  }

  build() {
    const root = this.$("visits-root");
    this.el = {
      contact: h("select", { id: "book-contact" }),
      day: h("select", { id: "book-day" }),
      info: h("p", { class: "muted", id: "book-info", role: "status" }),
      slots: h("ul", { class: "slots", id: "slots", "aria-labelledby": "slots-h" }),
      notice: h("p", { class: "notice", role: "alert", id: "book-notice" }),
      list: h("ul", { class: "plain", id: "visit-list", "aria-labelledby": "my-visits-h" }),
    };
    const e = this.el;
    e.contact.addEventListener("change", () => { this.today = null; this.loadSlots(); });
    e.day.addEventListener("change", () => this.loadSlots());
    root.replaceChildren(
      h("h3", {}, "Book a visit"),
      h("div", { class: "row" },
        h("div", {}, h("label", { for: "book-contact" }, "Visit with"), e.contact),
        h("div", {}, h("label", { for: "book-day" }, "Day"), e.day)),
      e.info,
      h("h4", { id: "slots-h", class: "sr-only" }, "Times you can book"),
      e.slots, e.notice,
      h("h3", { id: "my-visits-h" }, "Your visits"),
      e.list);
  }

  contacts() {
    return [...this.state.connections.values()].filter((c) => c.status === "approved" && !c.blocked);
  }

  nameOf(v) {
    const c = [...this.state.connections.values()].find((x) => x.id === v.connection_id);
    return (c && c.person_name) || "your contact";
  }

  renderContacts() {
    const sel = this.el.contact;
    const was = sel.value;
    const list = this.contacts();
    sel.replaceChildren(...list.map((c) => h("option", { value: c.id }, c.person_name || "Contact")));
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
      this.grid = null;
      this.el.slots.replaceChildren();
      say(this.el.info, "Connect with someone first: visits are booked with an approved contact.");
      return;
    }
    const day = this.today ? this.el.day.value : "";
    try {
      const q = day ? `?date=${encodeURIComponent(day)}` : "";
      this.grid = await api("GET", `/facilities/${encodeURIComponent(c.facility_id)}/slots${q}`);
    } catch (err) {
      say(this.el.notice, err.message, "error");
      return;
    }
    if (!this.today) {
      // Days are the facility's local dates, counted from its "today" as the server sees it.
      this.today = this.grid.date;
      this.el.day.replaceChildren(...Array.from({ length: DAYS_SHOWN }, (_, i) => {
        const d = addDays(this.today, i);
        return h("option", { value: d }, i === 0 ? `Today (${wallDay(d)})` : wallDay(d));
      }));
      this.el.day.value = this.grid.date;
    }
    this.renderSlots();
  }

  covered() {
    const g = this.grid;
    if (!g || !g.minute_price) return null; // free visits
    return Math.floor(this.state.balance / g.minute_price);
  }

  renderSlots() {
    const g = this.grid;
    if (!g) return;
    const covered = this.covered();
    const name = this.el.contact.selectedOptions[0]?.textContent || "your contact";
    const zone = `Times are the facility's (${g.timezone}, ${zoneLabel(`${g.date}T12:00:00Z`, g.timezone)}).`;
    say(this.el.info, covered === null ? `Visits are free here. ${zone}`
      : `A visit minute costs ${g.minute_price} credits. Your balance (${this.state.balance}) covers ${covered} minute${covered === 1 ? "" : "s"}. ${zone}`);
    this.el.slots.replaceChildren(...g.slots.map((s) => {
      const span = `${wallTime(s.start, g.timezone)}–${wallTime(s.end, g.timezone)}`;
      const mins = covered === null ? g.block_minutes : Math.min(covered, g.block_minutes);
      const why = !s.free ? "Full" : mins < 1 ? "Buy credits to book" : null;
      const cover = covered === null ? "free" : `covers ${mins} of ${g.block_minutes} min`;
      const btn = h("button", { type: "button", class: "slot", disabled: Boolean(why),
                                dataset: { start: s.start, covered: String(mins), free: String(s.free) },
                                "aria-label": why ? `${span}: ${why}` : `Book ${span} with ${name}: ${cover}, ${s.free} kiosk${s.free === 1 ? "" : "s"} free` },
        h("strong", {}, span), h("span", { class: "sub" }, why || cover),
        h("span", { class: "sub" }, `${s.free} free`));
      btn.addEventListener("click", () => this.book(s, btn));
      return h("li", {}, btn);
    }));
    if (!g.slots.length) this.el.slots.append(h("li", { class: "muted" }, "No times left on this day."));
  }

  async book(slot, btn) {
    btn.disabled = true;
    say(this.el.notice, "Booking…");
    try {
      const r = await api("POST", "/visits", { body: { connection_id: this.el.contact.value, start: slot.start } });
      const v = r.visit;
      this.visits.set(v.id, v);
      this.renderList();
      say(this.el.notice, `Booked: ${spanText(v.start, v.end, v.timezone)} with ${this.nameOf(v)}.`, "ok");
    } catch (err) {
      say(this.el.notice, err.message, "error");
    }
    await this.loadSlots();
  }

  async cancel(v, btn) {
    btn.disabled = true;
    try {
      const r = await api("POST", `/visits/${encodeURIComponent(v.id)}/cancel`);
      this.visits.set(v.id, r.visit);
      say(this.el.notice, `Cancelled the visit at ${wallTime(v.start, v.timezone)} ${zoneLabel(v.start, v.timezone)}.`, "ok");
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
      onCancel: (v, btn) => this.cancel(v, btn), empty: "No visits booked yet.",
    });
  }

  join(v) {
    if (this.call && !this.call.ended) return;
    const app = this.$("app");
    app.hidden = true;
    this.call = new VisitCall({
      root: this.$("visit-screen"), socket: this.state.socket, visit: v, side: "family",
      peer: this.nameOf(v), balance: this.state.balance,
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

  setBalance() {
    this.renderSlots();
  }

  onEvent(type, data) {
    if (type === "visit.updated") {
      this.visits.set(data.id, data);
      this.renderList();
    } else if (type === "connection.updated") {
      this.renderContacts();
      if (!this.grid) this.loadSlots().catch(() => {});
    }
    if (this.call) this.call.onEvent(type, data);
  }
}
