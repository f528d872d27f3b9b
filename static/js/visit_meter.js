// The meter's part of the video visit screen (visit.js): minutes paid and the balance as the
// server has them (ticks, the join reply), the time left in the visit and "Time left at your
// balance" counting down every second, and the meter's warnings.
import { h, say } from "./dom.js";
import { t } from "./i18n.js";

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

export class VisitMeter {
  /** `side` "family" or "person"; `price` a minute's (0: free); `balance` the family's when
   * known, shown until the first tick; `warning` the call's alert line, shared with it. */
  constructor({ side, price, balance, warning }) {
    Object.assign(this, { side, price, balance, warning });
    this.paid = 0;
    this.leftUntil = null;
    this.stopped = false;
    // "Time left at your balance" (docs/visits.md, "The call"): the paid time not used yet,
    // then a billed minute for each `price` of the balance. The paid time runs down only while
    // the call is live; paidUntil is when it runs out (performance.now() ms), null otherwise.
    this.minuteS = 60;
    this.paidLeftS = 0;
    this.paidUntil = null;
    this.ticks = []; // every tick shown, for tests and support: [{paid, balance}]
    this.el = {
      paid: h("dd", { id: "visit-paid", "data-paid": "0" }, "0"),
      balance: h("dd", { id: "visit-balance" }, this.balance === null ? "—" : this.balanceText()),
      left: h("dd", { id: "visit-left" }, "—"),
      atBalance: h("dd", { id: "visit-at-balance" }, "—"),
    };
    const e = this.el;
    const atLabel = side === "family" ? t("meter.left_at_yours") : t("meter.left_at_family");
    this.leftBox = h("dl", {}, h("div", {}, h("dt", {}, t("meter.left_in_visit")), e.left),
      h("div", {}, h("dt", {}, atLabel), e.atBalance));
    const balanceLabel = side === "family" ? t("meter.your_balance") : t("meter.family_balance");
    // Paid minutes and balance change once a minute: announced politely. Time left counts
    // down every second, so it is not a live region.
    this.box = h("div", { class: "meter" },
      h("dl", { role: "status", "aria-live": "polite", id: "visit-meter" },
        h("div", {}, h("dt", {}, t("meter.paid")), e.paid),
        h("div", {}, h("dt", {}, balanceLabel), e.balance)),
      this.leftBox);
    this.timer = setInterval(() => this.showLeft(), 1000);
  }

  /** The visit is over: nothing changes on screen any more. */
  stop() {
    this.stopped = true;
    clearInterval(this.timer);
  }

  balanceText() {
    const mins = this.price > 0 ? Math.floor(this.balance / this.price) : null;
    return mins === null ? t("credits.n", { n: this.balance })
      : `${t("credits.n", { n: this.balance })} ${t("meter.more_minutes", { n: mins })}`;
  }

  showLeft() {
    if (this.stopped) return;
    const now = performance.now();
    const windowS = this.leftUntil === null ? null : Math.max(0, (this.leftUntil - now) / 1000);
    if (windowS !== null) this.el.left.textContent = clock(windowS);
    const at = this.el.atBalance;
    if (this.price <= 0 || this.balance === null) return;
    const paid = this.paidUntil === null ? this.paidLeftS : Math.max(0, (this.paidUntil - now) / 1000);
    const seconds = paid + Math.floor(this.balance / this.price) * this.minuteS;
    at.dataset.seconds = String(Math.floor(seconds));
    // Past the window's end the balance is not the limit: say so rather than a longer time.
    at.textContent = windowS !== null && seconds >= windowS ? t("meter.enough") : clock(seconds);
    at.dataset.enough = String(windowS !== null && seconds >= windowS);
  }

  /** The paid time runs down while live and stands still otherwise. */
  runs(live) {
    const now = performance.now();
    if (live && this.paidUntil === null) this.paidUntil = now + this.paidLeftS * 1000;
    if (!live && this.paidUntil !== null) {
      this.paidLeftS = Math.max(0, (this.paidUntil - now) / 1000);
      this.paidUntil = null;
    }
  }

  /** The family's balance changed outside the meter (a top-up in the call, a gift): the
   * time at the balance follows at once, and a low-balance warning it answers is lifted. */
  setBalance(n) {
    if (this.stopped || typeof n !== "number" || n === this.balance) return;
    const more = this.balance !== null && n > this.balance;
    this.balance = n;
    this.el.balance.textContent = this.balanceText();
    this.el.balance.dataset.balance = String(n);
    if (more && this.price > 0 && Math.floor(n / this.price) > 1 && this.warning.dataset.warning === "low_balance") {
      say(this.warning, t("meter.topped_up", { n: Math.floor(n / this.price) }), "ok");
      this.warning.dataset.warning = "topped_up";
    }
    this.showLeft();
  }

  /** A visit.tick; `status` the visit's as last heard (undefined before the join reply). */
  tick(t, status) {
    this.ticks.push({ paid: t.paid_minutes, balance: t.balance });
    this.show(t.paid_minutes, t.balance);
    const now = performance.now();
    this.leftUntil = now + t.seconds_left * 1000;
    if (typeof t.minute_s === "number" && t.minute_s > 0) this.minuteS = t.minute_s;
    if (typeof t.paid_s_left === "number") {
      // A tick comes as the meter starts (or resumes) a paid stretch: it runs from here.
      this.paidLeftS = t.paid_s_left;
      this.paidUntil = status === "live" || status === undefined ? now + t.paid_s_left * 1000 : null;
    }
    this.showLeft();
  }

  /** Paid minutes and balance as the server has them (a tick, or the join reply's meter). */
  show(paid, balance) {
    this.paid = paid;
    this.el.paid.textContent = String(paid);
    this.el.paid.dataset.paid = String(paid);
    if (typeof balance === "number") { // null until the first minute is paid
      this.balance = balance;
      this.el.balance.textContent = this.balanceText();
      this.el.balance.dataset.balance = String(balance);
    }
  }

  warn(kind) {
    const text = kind === "low_balance"
      ? (this.side === "family" ? t("meter.low_yours") : t("meter.low_family"))
      : kind === "time" ? t("meter.time_almost_over") : t("meter.warning", { kind });
    say(this.warning, text, "warn");
    this.warning.dataset.warning = kind;
  }
}
