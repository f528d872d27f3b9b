// The "Buy credits" tab (hosted checkout, docs/payments.md): amounts in the server's blocks, the
// breakdown (price + fee = total) before paying; the card is typed on the payment processor's
// page, never here (POST /checkouts, then its page), and the server's own figures come after. The terms (block, fee, maximum)
// come from GET /pricing, the message price from the facility (GET /facilities) or GET /pricing.
// A video visit borrows this form for "Add credits" (call_credits.js), so its handling stays
// here whichever dialog holds it.
import { api, ApiError, newKey } from "../api.js";
import { $, dollars, h, say } from "../dom.js";
import { pricesOf } from "./contacts.js";
import { parts, t } from "../i18n.js";

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
    $("buy-credits").replaceChildren(...amounts.map((c) => h("option", { value: c }, t("credits.n", { n: c }))));
    $("buy-block").textContent = String(p.credit_block);
    // The sentence around the two figures, in the reader's words, the figures' spans kept.
    $("buy-terms").replaceChildren(...parts("buy.terms", { block: $("buy-block"), price: $("msg-price") }));
    $("buy-processor").textContent = t("buy.processor", { processor: p.processor });
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
    $("buy-fee").textContent = fee ? dollars(fee) : t("buy.no_fee");
    $("buy-total").textContent = dollars(total);
    $("buy-summary").textContent = fee
      ? t("buy.summary_fee", { n: credits, price: dollars(price), fee: dollars(fee), total: dollars(total) })
      : t("buy.summary", { n: credits, total: dollars(total) });
    $("pay").textContent = t("buy.pay", { total: dollars(total) });
  }

  async pay() {
    const pay = $("pay");
    // In a call the processor's page opens in a window of its own, opened now, while the click
    // still counts as the family's (a window opened after an await is a blocked popup); the
    // call's page never navigates. Elsewhere the app goes to the page and comes back.
    const inCall = Boolean($("buy-form").closest("dialog"));
    const win = inCall ? window.open("", "kinwire-checkout", "popup,width=480,height=760") : null;
    pay.disabled = true;
    say($("buy-notice"), t("buy.opening"));
    this.key = this.key || newKey(); // a retry of one click opens one checkout
    try {
      const r = await api("POST", "/checkouts", { key: this.key, body: {
        credits: Number($("buy-credits").value) } });
      this.key = null;
      if (win) {
        win.location.href = r.pay_url;
        say($("buy-notice"), t("buy.in_window", { total: dollars(r.checkout.total_cents), processor: r.processor }));
      } else {
        location.assign(r.pay_url);
      }
    } catch (err) {
      win?.close();
      if (err instanceof ApiError && err.status && err.status < 500) this.key = null; // a final answer
      say($("buy-notice"), err.message, "error");
    } finally {
      pay.disabled = false;
    }
  }

  /** The processor's signed confirmation, brought back by the return to the app or sent by the
   * payment window: Kinwire credits it (once, however often it comes) and the receipt is said. */
  async confirm(checkoutId, confirmation) {
    try {
      const r = await api("POST", `/checkouts/${encodeURIComponent(checkoutId)}/confirm`,
        { body: { confirmation } });
      const p = r.purchase;
      this.store.set("balance", r.balance);
      say($("buy-notice"), t("buy.paid", { total: dollars(p.total_cents), price: dollars(p.price_cents),
                                            fee: dollars(p.fee_cents), brand: p.card_brand,
                                            last4: p.card_last4, n: p.credits }), "ok");
    } catch (err) {
      say($("buy-notice"), err.message, "error");
    }
  }
}

/** A payment window's message (static/js/sandbox_pay.js): from this site only. */
export function checkoutMessage(ev) {
  const d = ev.data;
  if (ev.origin !== location.origin || !d || d.type !== "kinwire.checkout") return null;
  return typeof d.checkout === "string" && typeof d.confirmation === "string" ? d : null;
}
