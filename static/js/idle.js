// Idle sign-out for a shared kiosk (docs/security.md): after `seconds` without input the
// person is signed out, so whoever uses the kiosk next cannot read their messages. The last
// seconds are counted down on screen; any key, touch, click or scroll starts the wait again.
// `busy()` holds the clock still (a video visit needs no input to stay on).
import { t } from "./i18n.js";

const INPUT = ["pointerdown", "keydown", "wheel", "touchstart", "input"];

export class IdleSignOut {
  constructor(seconds, el, { onExpire, busy = () => false }) {
    this.seconds = seconds;
    this.warnS = Math.min(30, seconds / 2);
    this.el = el;
    this.onExpire = onExpire;
    this.busy = busy;
    this.reset = () => { this.last = performance.now(); this.tick(); };
  }

  start() {
    for (const type of INPUT) document.addEventListener(type, this.reset, { capture: true, passive: true });
    this.reset();
    this.timer = setInterval(() => this.tick(), 250);
    return this;
  }

  stop() {
    clearInterval(this.timer);
    for (const type of INPUT) document.removeEventListener(type, this.reset, { capture: true });
    this.el.hidden = true;
  }

  tick() {
    if (this.busy()) this.last = performance.now();
    const left = this.seconds - (performance.now() - this.last) / 1000;
    if (left <= 0) {
      this.stop();
      this.onExpire();
      return;
    }
    const shown = Math.ceil(left);
    this.el.hidden = left > this.warnS;
    this.el.dataset.secondsLeft = String(shown);
    this.el.textContent = t("idle.warning", { n: shown });
  }
}
