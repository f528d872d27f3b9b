// The Statement tab (GET /statement: one line per visit, message, refund, purchase, gift),
// newest first, a page at a time with the balance after each line, and the CSV download link.
import { api } from "../api.js";
import { $, dollars, h, say } from "../dom.js";
import { whenText, zoneOf } from "../time.js";

const PAGE = 20;

function describe(e) {
  const who = e.with || "a contact";
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  switch (e.kind) {
    case "purchase": return e.total_cents === undefined ? "Bought credits"
      : `Bought credits: ${dollars(e.price_cents)} + ${dollars(e.fee_cents)} fee = ${dollars(e.total_cents)} (card ending ${e.card_last4})`;
    case "gift": return `Gift ${e.direction} ${who}`;
    case "message": return `Message ${e.direction || "to"} ${who}${e.photos ? ` (${plural(e.photos, "photo")})` : ""}`;
    case "refund": return `Refund: message ${e.direction || "to"} ${who} rejected by review`;
    case "visit": return `Video visit with ${who}, ${plural(e.minutes, "minute")}`;
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
    $("statement-balance").textContent = `${this.balance} credits`;
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
