// The Statement tab (GET /statement: one line per visit, message, refund, purchase, gift),
// newest first, a page at a time with the balance after each line, and the CSV download link.
import { api } from "../api.js";
import { $, dollars, h, say } from "../dom.js";
import { whenText, zoneOf } from "../time.js";
import { t } from "../i18n.js";

const PAGE = 20;

function describe(e) {
  const who = e.with || t("statement.a_contact");
  // `direction` is "to" or "from" (GET /statement): one message id for each.
  const dir = e.direction === "from" ? "from" : "to";
  switch (e.kind) {
    case "purchase": return e.total_cents === undefined ? t("statement.bought")
      : t("statement.bought_detail", { price: dollars(e.price_cents), fee: dollars(e.fee_cents),
                                       total: dollars(e.total_cents), last4: e.card_last4 });
    case "gift": return t(`statement.gift_${dir}`, { who });
    case "message": return t(`statement.message_${dir}`, { who })
      + (e.photos ? t("statement.photos", { n: e.photos }) : "");
    case "refund": return t(`statement.refund_${dir}`, { who });
    case "visit": return t("statement.visit", { who, n: e.minutes });
    default: return e.kind.replace(/_/g, " ");
  }
}

export class Statement {
  constructor() {
    this.pageSize = PAGE; // smaller in tests, to show paging
    this.rows = [];
    this.next = null;
    this.balance = 0;
    for (const id of ["export-from", "export-to"]) $(id).addEventListener("change", () => this.exportLink());
    $("statement-export").addEventListener("submit", (ev) => ev.preventDefault());
    this.exportLink();
    $("statement-more").addEventListener("click", () => this.more());
  }

  /** The tab was opened: read it afresh. */
  shown() {
    this.load(true);
  }

  async load(first) {
    say($("statement-notice"), "");
    try {
      const before = first ? "" : `&before=${this.next}`;
      const r = await api("GET", `/statement?limit=${this.pageSize}${before}`);
      if (first) {
        this.rows = [];
        this.balance = r.balance;
      }
      // Running balance, newest first: each older line's "after" is the newer one's minus its amount.
      let after = this.rows.length ? this.rows.at(-1).after - this.rows.at(-1).credits : this.balance;
      for (const e of r.lines) {
        this.rows.push({ ...e, after });
        after -= e.credits;
      }
      this.next = r.next_before;
      this.render();
    } catch (err) {
      say($("statement-notice"), err.message, "error");
    }
  }

  render() {
    $("statement-balance").textContent = t("credits.n", { n: this.balance });
    $("statement-rows").replaceChildren(...this.rows.map((e) =>
      h("tr", { dataset: { kind: e.kind, credits: e.credits } },
        h("td", {}, h("time", { datetime: e.at }, whenText(e.at, e.facility_id ? zoneOf(e.facility_id) : undefined))),
        h("td", {}, describe(e)),
        h("td", { class: e.credits > 0 ? "in" : "out" }, e.credits > 0 ? `+${e.credits}` : `−${-e.credits}`),
        h("td", {}, String(e.after)))));
    $("statement-empty").hidden = this.rows.length > 0;
    $("statement-more").hidden = !this.next;
  }

  async more() {
    const count = this.rows.length;
    await this.load(false);
    // Keyboard users land on the first of the lines just shown.
    const row = $("statement-rows").children[count];
    if (row) {
      row.tabIndex = -1;
      row.focus();
    }
  }

  /** The CSV of a range of days in this browser's zone (GET /statement/export). */
  exportLink() {
    const q = new URLSearchParams({ tz: Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" });
    if ($("export-from").value) q.set("from", $("export-from").value);
    if ($("export-to").value) q.set("to", $("export-to").value);
    $("export-link").href = `/api/v1/statement/export?${q}`;
  }
}
