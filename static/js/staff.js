// The staff console (docs/clients.md): log in, then its panels, one module each
// (static/js/staff/): the review queue, the facility's visits with End and Watch, the
// recordings, the audit log and the facility's settings (changed by administrators).
// Plain HTTP with the session cookie; the queue and visits are polled while the page is shown.
// The socket is opened only to watch a visit (staff/watch.js).
import { api } from "./api.js";
import { loadLanguage } from "./i18n.js";
import { $, h, say } from "./dom.js";
import { bindEmailLogin } from "./login.js";
import { rememberZones, setHomeZone, whenText } from "./time.js";
import { auditLog } from "./staff/audit.js";
import { Names } from "./staff/names.js";
import { Recordings } from "./staff/recordings.js";
import { reviewQueue } from "./staff/review.js";
import { FacilitySettings } from "./staff/settings.js";
import { Visits } from "./staff/visits.js";
import { Watch } from "./staff/watch.js";

// In English for now: the shared modules take their words from the catalogue (i18n.js).
await loadLanguage("en");

const POLL_MS = 5000;
// Staff read the facility's time (time.js; the home zone follows the facility shown).
const when = (iso) => whenText(iso);

// The signed-in console: the panels and the facility they show. Staff see their own facility;
// administrators choose one (#facility), and every request says which (`scoped`).
class StaffConsole {
  constructor(me) {
    this.me = me;
    this.admin = me.role === "admin";
    this.facility = null; // the id of the facility shown
    this.facilities = new Map();
    this.timer = null;
    const scoped = (path) => this.scoped(path);
    const names = new Names(me);
    const audit = auditLog({ scoped, when });
    this.names = names;
    this.audit = audit;
    this.review = reviewQueue({ scoped, names, when, decided: () => audit.load() });
    this.watch = new Watch({ audit, onEnded: () => this.visits.load().catch(() => {}) });
    this.visits = new Visits({ scoped, names, audit, onWatch: (v, who) => this.watch.start(v, who),
                               onEnded: (v) => this.watch.endedByStaff(v.id) });
    this.recordings = new Recordings({ scoped, names, when });
    this.settings = new FacilitySettings({ admin: this.admin, audit, onSaved: (f) => {
      this.facilities.set(f.id, f);
      setHomeZone(f.timezone);
    } });
    $("review-refresh").addEventListener("click", () => this.review.load(true).catch((e) => say($("notice"), e.message, "error")));
    $("facility").addEventListener("change", () => this.choose($("facility").value));
  }

  scoped(path) {
    return this.admin ? `${path}${path.includes("?") ? "&" : "?"}facility_id=${encodeURIComponent(this.facility)}` : path;
  }

  async loadFacilities() {
    const r = await api("GET", "/facilities");
    this.facilities = new Map(r.facilities.map((f) => [f.id, f]));
    rememberZones(r.facilities);
    if (!this.facility || !this.facilities.has(this.facility)) {
      this.facility = this.admin ? (r.facilities[0] || {}).id : this.me.facility_id;
    }
    $("facility-pick").hidden = !this.admin;
    $("facility").replaceChildren(...r.facilities.map((f) => h("option", { value: f.id }, f.name)));
    $("facility").value = this.facility || "";
    this.showSettings();
  }

  showSettings() {
    const f = this.facilities.get(this.facility);
    if (!f) return;
    setHomeZone(f.timezone);
    this.settings.show(f);
  }

  async choose(id) {
    this.facility = id;
    this.watch.stop();
    this.showSettings();
    await this.loadAll().catch((e) => say($("notice"), e.message, "error"));
  }

  loadAll() {
    return Promise.all([this.review.load(true), this.visits.load(), this.audit.load(), this.recordings.load()]);
  }

  poll() {
    clearTimeout(this.timer);
    this.timer = setTimeout(async () => {
      if (document.visibilityState !== "hidden") {
        await Promise.all([this.review.load(), this.visits.load()]).catch(() => {});
      }
      this.poll();
    }, POLL_MS);
  }
}

// ---------- sign in / out ----------
let signedIn = null; // the StaffConsole, once the account is known to be staff

bindEmailLogin(() => start());

$("logout").addEventListener("click", async () => {
  try { await api("POST", "/auth/logout"); } catch { /* signed out either way */ }
  location.reload();
});

async function start() {
  const me = await api("GET", "/me");
  if (me.account.role !== "staff" && me.account.role !== "admin") {
    throw new Error("This console is for facility staff.");
  }
  const app = signedIn = signedIn || new StaffConsole(me.account);
  $("me-name").textContent = me.account.name;
  $("login-form").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  await Promise.all([app.names.load(), app.loadFacilities()]);
  await app.loadAll();
  app.poll();
  window.kinwire = { me: me.account, console: app }; // for tests and the curious
  document.body.dataset.ready = "signed-in";
}

(async () => {
  try {
    await start();
  } catch (err) {
    $("login-form").hidden = false;
    if (signedIn === null && err.status !== 401) say($("login-notice"), err.message, "error");
    document.body.dataset.ready = "signed-out";
  }
})();
