// The video visit's screen (docs/clients.md, "Video visits"): the two pictures, the status
// line, the link line, the meter's figures and warnings (visit_meter.js), the recording notice,
// the controls, and why the visit ended. It shows what the call (visit.js) tells it and hands
// the controls' clicks back; it holds no call state of its own.
import { h, say } from "../dom.js";
import { CallCredits } from "../call_credits.js";
import { dayText, timeText } from "../time.js";
import { VisitMeter } from "../visit_meter.js";
import { t } from "../i18n.js";

/**
 * What a party is told about recording and monitoring (issue 15: before joining and during the
 * call). Only relay-mode visits pass through the server, so only they can be recorded or
 * watched; a privileged connection's visit (`record` false) is not recorded.
 */
export function recordingNotice(v) {
  return v.media === "relay" && v.record ? t("visit.recorded") : t("visit.not_recorded");
}

/** Why a visit ended, in words; `byMe` when this side hung up. */
export function endedText(reason, { byMe = false, peer = t("visit.other_side"), payer = "the" } = {}) {
  // `payer`: whose balance ran out, "your", "the family's" or "the" (a list of visits).
  const whose = { your: "yours", "the family's": "family" }[payer] || "the";
  switch (reason) {
    case "balance_exhausted": return t(`visit.ended.balance_${whose}`);
    case "hung_up": return byMe ? t("visit.ended.hung_up_me") : t("visit.ended.hung_up", { name: peer });
    case "time_up": case "staff_ended": case "failed": case "cancelled_by_family":
    case "cancelled_by_staff": case "missed": return t(`visit.ended.${reason}`);
    default: return reason ? t("visit.ended.other_why", { why: reason }) : t("visit.ended.other");
  }
}

/** "12:00" on the facility's wall clock (`zone`), whatever the browser's (time.js). */
export function wallTime(iso, zone) {
  return timeText(iso, zone);
}

/** "Fri 27 Nov": an instant's day at the facility (`zone`), or a plain date (time.js). */
export function wallDay(iso, zone) {
  return dayText(iso, zone);
}

/**
 * The screen of one visit's call, built into `root`. `side` is "family" or "person"; `peer`
 * the other party's name; `balance` the family's balance when known, shown until the first
 * tick; `creditsForm` the family app's purchase form (#buy-form), shown in a dialog by the
 * "Add credits" button. `on`: what the controls do, {hangUp, back, toggle(kind, off)}, and
 * `isOver()`: whether the call has ended (a purchase dialog then closes).
 */
export class VisitScreen {
  constructor({ root, visit, side, peer, balance, creditsForm, on, isOver }) {
    Object.assign(this, { root, side, on });
    const them = peer || t("contact.yours_lower");
    const warning = h("p", { class: "notice visit-warning", role: "alert", id: "visit-warning" });
    this.meter = new VisitMeter({ side, price: visit.minute_price || 0, balance, warning });
    this.el = {
      status: h("p", { class: "visit-status", role: "status", id: "visit-status" }, t("call.starting")),
      remote: h("video", { id: "visit-remote", autoplay: true, playsinline: true, "aria-label": t("call.their_video", { name: them }) }),
      local: h("video", { id: "visit-local", autoplay: true, playsinline: true, "aria-label": t("call.your_camera") }),
      warning,
      threshold: h("p", { class: "visit-threshold", id: "visit-threshold" }),
      // The level is a polite live region, so a change is announced once; the figures beside
      // it change every couple of seconds and are read with the line, not announced.
      linkLevel: h("span", { id: "visit-link-level", role: "status", "aria-live": "polite",
                             "aria-atomic": "true" }, t("link.measuring")),
      linkReason: h("span", { id: "visit-link-reason" }),
      // Focused when the visit ends: named by its own text (an alert takes no name from its
      // content), so a screen reader says why it ended on focus, not only as an alert.
      ended: h("p", { class: "visit-ended", role: "alert", id: "visit-ended", tabindex: "-1", hidden: true,
                      "aria-labelledby": "visit-ended" }),
      mic: h("button", { type: "button", id: "visit-mic", "aria-pressed": "false" }, t("call.mute")),
      cam: h("button", { type: "button", id: "visit-cam", "aria-pressed": "false" }, t("call.camera_off")),
      hangup: h("button", { type: "button", class: "danger", id: "visit-hangup" }, t("call.hang_up")),
      back: h("button", { type: "button", class: "primary", id: "visit-back", hidden: true }, t("call.back")),
    };
    this.el.local.muted = true; // never play our own microphone back
    const e = this.el;
    e.videos = h("div", { class: "videos" },
      h("figure", { class: "remote" }, e.remote, h("figcaption", {}, them)),
      h("figure", { class: "self" }, e.local, h("figcaption", {}, t("call.you"))));
    e.link = h("p", { class: "visit-link", id: "visit-link" }, t("link.quality") + " ", e.linkLevel, " ", e.linkReason);
    // "Add credits" (call_credits.js): the family only, when the app gives its purchase form.
    this.credits = side === "family" && creditsForm ? new CallCredits(creditsForm, isOver) : null;
    e.mic.addEventListener("click", () => this.toggle("audio", e.mic, t("call.mute"), t("call.unmute")));
    e.cam.addEventListener("click", () => this.toggle("video", e.cam, t("call.camera_off"), t("call.camera_on")));
    e.hangup.addEventListener("click", () => on.hangUp());
    e.back.addEventListener("click", () => on.back());
    root.replaceChildren(h("section", { class: "card visit", "aria-labelledby": "visit-h",
                                         dataset: { visit: visit.id } },
      h("h2", { id: "visit-h", tabindex: "-1" }, t("call.title", { name: them })),
      h("p", { class: "visit-recording", id: "visit-recording", dataset: { recorded: String(visit.media === "relay" && Boolean(visit.record)) } },
        recordingNotice(visit)),
      e.status, e.ended,
      e.videos,
      e.link,
      this.meter.box,
      e.threshold,
      e.warning,
      h("div", { class: "row visit-controls" }, e.mic, e.cam, this.credits?.button, e.hangup, e.back),
      this.credits?.dialog));
    root.hidden = false;
    root.querySelector("#visit-h").focus(); // keyboard and screen-reader users land here
  }

  showOwn(stream) {
    this.el.local.srcObject = stream;
  }

  showTheirs(stream) {
    this.el.remote.srcObject = stream;
  }

  /** A track was added to their picture: play it (autoplay may have stopped on an empty one). */
  playTheirs() {
    this.el.remote.play().catch(() => {});
  }

  warn(text) {
    say(this.el.warning, text, "error");
  }

  hangingUp() {
    this.el.hangup.disabled = true;
  }

  setStatus(text, state) {
    this.el.status.textContent = text;
    if (state) this.root.dataset.call = state;
  }

  /** Mute or turn off the camera (the call does it to the tracks: `on.toggle`). */
  toggle(kind, button, onText, offText) {
    const off = button.getAttribute("aria-pressed") !== "true";
    if (!this.on.toggle(kind, off)) return; // no camera or microphone to turn off
    button.setAttribute("aria-pressed", String(off));
    button.textContent = off ? offText : onText;
  }

  showThreshold(stallMs) {
    this.el.threshold.textContent = t("call.threshold", { n: Math.round(stallMs / 1000) });
  }

  /** The link line: `link` from MediaWatch (its label changes only with its level). */
  showLink(link) {
    if (this.el.link.dataset.level !== link.level) this.el.linkLevel.textContent = link.label;
    this.el.link.dataset.level = link.level;
    this.el.linkReason.textContent = link.reason ? `(${link.reason})` : "";
  }

  /** A new media session: its link is measured afresh. */
  measuringLink() {
    this.el.linkLevel.textContent = t("link.measuring");
    this.el.linkReason.textContent = "";
    delete this.el.link.dataset.level;
  }

  /** The start failed (no join): Back closes the screen. */
  failed(text) {
    this.setStatus(text, "error");
    this.el.back.hidden = false;
    this.el.hangup.hidden = true;
  }

  /** The end: why, and the minutes paid; Back closes the screen. */
  ended(reason, text) {
    this.setStatus(t("call.ended_after", { n: this.meter.paid }), "ended");
    this.el.videos.hidden = this.meter.leftBox.hidden = this.el.link.hidden = true;
    this.el.ended.textContent = text;
    this.el.ended.dataset.reason = reason;
    this.el.ended.hidden = false;
    this.el.hangup.hidden = this.el.mic.hidden = this.el.cam.hidden = true;
    if (this.credits) this.credits.close();
    this.el.back.hidden = false;
    this.el.ended.focus();
  }

  /** The call's media is gone: the pictures and the meter stop. */
  stop() {
    if (this.credits) this.credits.close(); // the purchase form goes back to the app
    this.meter.stop();
    this.el.remote.srcObject = null;
    this.el.local.srcObject = null;
  }

  close() {
    this.root.hidden = true;
    this.root.replaceChildren();
  }
}
