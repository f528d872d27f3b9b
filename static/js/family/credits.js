// The "Buy credits" tab (POST /purchases): amounts in the server's blocks, the breakdown (price
// + fee = total) before paying, the server's own figures after. The terms (block, fee, maximum)
// come from GET /pricing, the message price from the facility (GET /facilities) or GET /pricing.
// A video visit borrows this form for "Add credits" (call_credits.js), so its handling stays
// here whichever dialog holds it.
import { api, ApiError, newKey } from "../api.js";
import { $, dollars, h, say } from "../dom.js";
import { pricesOf } from "./contacts.js";

const BLOCKS = [1, 2, 4, 10]; // the amounts offered, in blocks

export class BuyCredits {
  /** `store`: the page's balance and contacts; `pricing`: GET /pricing; `facilities`: GET
   * /facilities, a Map by id (a facility may set its own prices). */
  constructor({ store, pricing, facilities }) {
    this.store = store;
    this.pricing = pricing;
    this.key = null; // kept across retries of one purchase, so a retry never charges twice
    const p = pricing;
    const amounts = BLOCKS.map((n) => n * p.credit_block).filter((c) => c <= p.purchase_credits_max);
    $("buy-credits").replaceChildren(...amounts.map((c) => h("option", { value: c }, `${c} credits`)));
    $("buy-block").textContent = String(p.credit_block);
    // The message price of the family's facility (its first contact's, as for the home zone).
    store.watch("connections", (connections) => {
      const first = [...connections.values()][0];
      $("msg-price").textContent = String(pricesOf(first, pricing, facilities).message);
    });
    $("buy-credits").addEventListener("change", () => this.renderQuote());
    $("buy-form").addEventListener("submit", (ev) => { ev.preventDefault(); this.pay(); });
    this.renderQuote();
  }

  renderQuote() {
    const p = this.pricing;
    const credits = Number($("buy-credits").value);
    const price = credits * p.cents_per_credit;
    const fee = p.purchase_fee_cents;
    const total = price + fee;
    $("buy-price").textContent = dollars(price);
    $("buy-fee").textContent = fee ? dollars(fee) : "none";
    $("buy-total").textContent = dollars(total);
    $("buy-summary").textContent = fee
      ? `${credits} credits: ${dollars(price)} + ${dollars(fee)} fee = ${dollars(total)} total`
      : `${credits} credits: ${dollars(total)} total, no fee`;
    $("pay").textContent = `Pay ${dollars(total)}`;
  }

  async pay() {
    const pay = $("pay");
    pay.disabled = true;
    say($("buy-notice"), "Paying…");
    this.key = this.key || newKey();
    try {
      const r = await api("POST", "/purchases", { key: this.key, body: {
        credits: Number($("buy-credits").value),
        card: { number: $("card-number").value.replace(/\s+/g, ""), exp_month: Number($("card-month").value),
                exp_year: Number($("card-year").value), cvc: $("card-cvc").value, name: $("card-name").value } } });
      this.key = null;
      const p = r.purchase;
      this.store.set("balance", r.balance);
      say($("buy-notice"), `Paid ${dollars(p.total_cents)} (${dollars(p.price_cents)} + ${dollars(p.fee_cents)} fee) with ${p.card_brand} ending ${p.card_last4}. ${p.credits} credits added.`, "ok");
      $("card-number").value = "";
      $("card-cvc").value = "";
    } catch (err) {
      if (err instanceof ApiError && err.status && err.status < 500) this.key = null; // a final answer
      say($("buy-notice"), err.message, "error");
    } finally {
      pay.disabled = false;
    }
  }
}
