// The sections of the signed-in app as ARIA tabs: every role=tab button in the nav (so a new
// section needs only its markup), one tab stop, the arrow keys, Home and End switch.
import { $ } from "../dom.js";

export class Tabs {
  /** `onShow(name)` after the tab `name` ("messages", "find", ...) is shown. */
  constructor(nav, onShow) {
    this.nav = nav;
    this.onShow = onShow;
    this.names = [...nav.querySelectorAll("[role=tab]")].map((b) => b.id.slice(4));
    for (const t of this.names) $(`tab-${t}`).addEventListener("click", () => this.show(t));
    nav.addEventListener("keydown", (ev) => this.key(ev));
  }

  /** The tab shown (the first until one is chosen). */
  get current() {
    return document.body.dataset.tab || "messages";
  }

  show(name) {
    for (const t of this.names) {
      $(`tab-${t}`).setAttribute("aria-selected", String(t === name));
      $(`tab-${t}`).tabIndex = t === name ? 0 : -1; // one tab stop; arrows move inside (ARIA tabs)
      $(`panel-${t}`).hidden = t !== name;
    }
    document.body.dataset.tab = name;
    this.onShow(name);
  }

  key(ev) {
    const tabs = this.names;
    const i = tabs.indexOf(this.current);
    const step = { ArrowRight: 1, ArrowLeft: tabs.length - 1 }[ev.key];
    const next = ev.key === "Home" ? tabs[0] : ev.key === "End" ? tabs[tabs.length - 1]
      : step ? tabs[(i + step) % tabs.length] : null;
    if (!next) return;
    ev.preventDefault();
    this.show(next);
    $(`tab-${next}`).focus();
  }
}
