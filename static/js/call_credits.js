// "Add credits" during a video visit (docs/clients.md, "Adding credits in the call"): the
// family app's own purchase form (#buy-form, family.js: the same terms, fee, receipt and
// Idempotency-Key handling) moved into a modal dialog over the call, and put back where it
// was when the dialog closes. Paying is a fetch: nothing navigates, so the peer connection and
// the socket stay up; the new balance reaches the call through the app's balance handling
// (VisitCall.setBalance).
import { h } from "./dom.js";
import { t } from "./i18n.js";

export class CallCredits {
  /** `form`: the purchase form element; `isOver()`: whether the call has ended. */
  constructor(form, isOver) {
    this.form = form;
    this.isOver = isOver;
    this.home = null; // where the form lives in the app: {parent, next}
    this.button = h("button", { type: "button", id: "visit-add-credits", "aria-haspopup": "dialog" }, t("call.add_credits"));
    this.slot = h("div", { class: "visit-credits-form" });
    const back = h("button", { type: "button", id: "visit-credits-close" }, t("call.back_to_call"));
    this.dialog = h("dialog", { class: "confirm visit-credits", id: "visit-credits", "aria-labelledby": "visit-credits-h" },
      h("h2", { id: "visit-credits-h" }, t("call.add_credits")),
      h("p", { class: "muted" }, t("call.keeps_going")),
      this.slot,
      h("p", {}, back));
    this.button.addEventListener("click", () => this.open());
    back.addEventListener("click", () => this.dialog.close());
    this.dialog.addEventListener("close", () => this.putBack());
  }

  open() {
    if (this.isOver()) return;
    if (!this.home) this.home = { parent: this.form.parentNode, next: this.form.nextSibling };
    this.slot.append(this.form);
    this.dialog.showModal();
    this.form.querySelector("select, input")?.focus();
  }

  putBack() {
    const home = this.home;
    if (!home) return;
    this.home = null;
    home.parent.insertBefore(this.form, home.next);
    if (!this.isOver()) this.button.focus();
  }

  /** The call ended: no more buying from it; the form goes home. */
  close() {
    this.button.hidden = true;
    if (this.dialog.open) this.dialog.close();
    else this.putBack();
  }
}
