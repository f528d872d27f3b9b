// The staff console (docs/clients.md): log in, the review queue (staff_review.js), the
// facility's visits with End (confirmed, with a reason) for those in a call and Watch for
// relayed ones, the audit log (staff_audit.js), and the facility's settings (changed by
// administrators; a refused value is explained beside its field).
// Plain HTTP with the session cookie; the queue and visits are polled while the page is shown.
// The socket is opened only to watch a visit (visit.watch and its answer).
import { api } from "./api.js";
import { $, h, say } from "./dom.js";
import { bindEmailLogin } from "./login.js";
import { LINK_WORDS } from "./link_quality.js";
import { KinwireSocket } from "./socket.js";
import { auditLog } from "./staff_audit.js";
import { reviewQueue } from "./staff_review.js";
import { rememberZones, setHomeZone, spanText, whenText } from "./time.js";

const IN_CALL = new Set(["open", "live", "paused"]);
const POLL_MS = 5000;
const state = { me: null, names: new Map(), timer: null, facility: null,
                facilities: new Map(), socket: null, watch: null };

// Staff read the facility's time (time.js; the home zone follows the facility shown).
const when = (iso) => whenText(iso);
const nameOf = (id) => state.names.get(id) || id;
const isAdmin = () => state.me && state.me.role === "admin";
// Staff see their own facility; administrators say which one they are looking at.
const scoped = (path) => (isAdmin() ? `${path}${path.includes("?") ? "&" : "?"}facility_id=${encodeURIComponent(state.facility)}` : path);

// ---------- sign in / out ----------
bindEmailLogin(() => start());

$("logout").addEventListener("click", async () => {
  try { await api("POST", "/auth/logout"); } catch { /* signed out either way */ }
  location.reload();
});

// ---------- names (staff see the facility's connections) ----------
async function loadNames() {
  if (isAdmin()) return; // GET /connections is for the facility's own staff: admins see ids
  const r = await api("GET", "/connections");
  for (const c of r.connections) {
    if (c.family_name) state.names.set(c.family_id, c.family_name);
    if (c.person_name) state.names.set(c.person_id, c.person_name);
  }
}

const review = reviewQueue({ scoped, names: state.names, nameOf, loadNames, when,
                             decided: () => audit.load() });
const audit = auditLog({ scoped, when });

// ---------- visits ----------
async function loadVisits() {
  const now = new Date();
  const from = new Date(now.getTime() - 12 * 3600e3).toISOString();
  const to = new Date(now.getTime() + 12 * 3600e3).toISOString();
  const r = await api("GET", scoped(`/visits?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`));
  if (r.visits.some((v) => !state.names.has(v.family_id) || !state.names.has(v.person_id))) await loadNames();
  $("visits-empty").hidden = r.visits.length > 0;
  $("visit-list").replaceChildren(...r.visits.map((v) => {
    const who = `${nameOf(v.family_id)} and ${nameOf(v.person_id)}`;
    let end = null;
    let watch = null;
    if (IN_CALL.has(v.status) && v.media === "relay") {
      watch = h("button", { type: "button", "aria-label": `Watch the visit of ${who}` }, "Watch");
      watch.addEventListener("click", () => startWatch(v, who));
    }
    if (IN_CALL.has(v.status)) {
      end = h("button", { type: "button", class: "danger", "aria-label": `End the visit of ${who}` }, "End");
      end.addEventListener("click", () => askToEnd(v, who, end));
    }
    // The kiosk's last word on the call's link (docs/visits.md, "Link quality"), in words.
    const link = IN_CALL.has(v.status) && v.link_quality
      ? h("span", { class: "visit-link", dataset: { level: v.link_quality } },
        `Link: ${LINK_WORDS[v.link_quality] || v.link_quality}${v.link_reason ? ` (${v.link_reason})` : ""}`)
      : null;
    return h("li", { dataset: { visit: v.id, status: v.status } },
      h("span", {}, h("strong", {}, who), h("br"),
        h("span", { class: "muted" }, `${spanText(v.start, v.end, v.timezone)} · ${v.media}`),
        link && [h("br"), link]),
      h("span", { class: `badge ${v.status === "live" ? "read" : ""}` },
        v.end_reason ? `${v.status} (${v.end_reason.replace(/_/g, " ")})` : v.status),
      watch, end);
  }));
}

// ---------- ending a visit: confirmed, with a reason (written to the audit log) ----------
let ending = null;

function askToEnd(v, who, button) {
  ending = { v, who, button };
  $("end-who").textContent = `The call of ${who} stops at once for both sides.`;
  $("end-reason").value = "";
  say($("end-notice"), "");
  $("end-dialog").showModal();
  $("end-reason").focus();
}

$("end-cancel").addEventListener("click", () => {
  $("end-dialog").close();
  if (ending) ending.button.focus();
  ending = null;
});

$("end-reason").addEventListener("input", () => say($("end-notice"), ""));

$("end-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const reason = $("end-reason").value.trim();
  if (!reason) {
    say($("end-notice"), "Write why the visit is ended: the reason goes to the audit log.", "error");
    $("end-reason").focus();
    return;
  }
  const { v, who } = ending;
  $("end-confirm").disabled = true;
  try {
    await api("POST", `/visits/${encodeURIComponent(v.id)}/end`, { body: { reason } });
    $("end-dialog").close();
    ending = null;
    say($("notice"), `Ended the visit of ${who}.`, "ok");
    if (state.watch && state.watch.visitId === v.id) stopWatch("The visit ended (ended by staff).");
  } catch (err) {
    say($("end-notice"), err.message, "error");
  } finally {
    $("end-confirm").disabled = false;
  }
  await Promise.all([loadVisits(), audit.load()]).catch(() => {});
});

// ---------- recordings (GET /recordings; the file plays from /recordings/{id}/media, by byte
// ranges, each request audited) ----------
async function loadRecordings() {
  const r = await api("GET", scoped("/recordings?limit=50"));
  if (r.recordings.some((x) => !state.names.has(x.family_id) || !state.names.has(x.person_id))) await loadNames();
  $("recordings-empty").hidden = r.recordings.length > 0;
  $("recording-list").replaceChildren(...r.recordings.map((x) => {
    const who = `${nameOf(x.family_id)} and ${nameOf(x.person_id)}`;
    const play = h("button", { type: "button", "aria-label": `Play the recording of ${who} at ${when(x.started_at)}` }, "Play");
    play.addEventListener("click", () => {
      $("recording-player").src = `/api/v1/recordings/${encodeURIComponent(x.id)}/media`;
      $("recording-cap").textContent = `${who}, ${when(x.started_at)}`;
      $("recording-figure").hidden = false;
      $("recording-player").play().catch(() => {}); // autoplay may be refused: the controls remain
    });
    const minutes = Math.floor(x.duration_s / 60);
    const seconds = String(Math.round(x.duration_s % 60)).padStart(2, "0");
    return h("li", { dataset: { recording: x.id } },
      h("span", {}, h("strong", {}, who), h("br"),
        h("span", { class: "muted" }, `${when(x.started_at)} · ${minutes}:${seconds} · kept until ${when(x.retain_until)}`)),
      play);
  }));
}

$("recordings-refresh").addEventListener("click", () => loadRecordings().catch((e) => say($("notice"), e.message, "error")));
$("visits-refresh").addEventListener("click", () => loadVisits().catch((e) => say($("notice"), e.message, "error")));
$("review-refresh").addEventListener("click", () => review.load(true).catch((e) => say($("notice"), e.message, "error")));

// ---------- facility settings (GET /facilities/{id}; PATCH by administrators) ----------
const NUMBERS = ["kiosks", "booking_horizon_days", "cancel_cutoff_minutes"];
const PRICES = ["message", "photo", "visit_minute"];

function showSettings() {
  const f = state.facilities.get(state.facility);
  if (!f) return;
  setHomeZone(f.timezone);
  const st = f.settings;
  $("set-review_mode").value = st.review_mode;
  $("set-review_photos").checked = Boolean(st.review_photos);
  $("set-keywords").value = (st.keywords || []).join("\n");
  for (const k of PRICES) $(`set-price-${k}`).value = st.prices[k];
  $("set-visit_block_minutes").value = String(st.visit_block_minutes);
  $("set-hours-start").value = st.visit_hours.start;
  $("set-hours-end").value = st.visit_hours.end;
  for (const k of NUMBERS) $(`set-${k}`).value = st[k];
  $("set-media").value = st.media;
  $("set-record_visits").checked = Boolean(st.record_visits);
  $("settings-fields").disabled = !isAdmin();
  $("settings-save").hidden = !isAdmin();
  $("settings-who").textContent = isAdmin()
    ? `${f.name} (${f.timezone}). Changes apply at once and are written to the audit log.`
    : `${f.name} (${f.timezone}). Only an administrator can change these settings.`;
}

function formSettings() {
  const num = (id) => Number($(id).value);
  return {
    review_mode: $("set-review_mode").value,
    review_photos: $("set-review_photos").checked,
    keywords: $("set-keywords").value.split(/[\n,]/).map((w) => w.trim()).filter(Boolean),
    prices: Object.fromEntries(PRICES.map((k) => [k, num(`set-price-${k}`)])),
    visit_block_minutes: num("set-visit_block_minutes"),
    visit_hours: { start: $("set-hours-start").value, end: $("set-hours-end").value },
    ...Object.fromEntries(NUMBERS.map((k) => [k, num(`set-${k}`)])),
    media: $("set-media").value,
    record_visits: $("set-record_visits").checked,
  };
}

$("settings-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = state.facilities.get(state.facility);
  const next = formSettings();
  // Send only what changed, so the audit entry says what this person did.
  const changed = Object.fromEntries(Object.entries(next).filter(
    ([k, v]) => JSON.stringify(v) !== JSON.stringify(f.settings[k])));
  if (!Object.keys(changed).length) {
    say($("settings-notice"), "Nothing changed.");
    return;
  }
  $("settings-save").disabled = true;
  clearFieldErrors();
  try {
    const r = await api("PATCH", `/facilities/${encodeURIComponent(f.id)}`, { body: { settings: changed } });
    state.facilities.set(f.id, r.facility);
    showSettings();
    say($("settings-notice"), `Saved: ${Object.keys(changed).map((k) => k.replace(/_/g, " ")).join(", ")}.`, "ok");
    await audit.load();
  } catch (err) {
    showFieldErrors((err.details && err.details.fields) || []);
    say($("settings-notice"), err.message, "error");
  } finally {
    $("settings-save").disabled = false;
  }
});

// A refused setting is explained beside its field (the server's words: "Visiting hours must
// start before they end."), and the field is marked invalid for screen readers.
function fieldInput(path) {
  const [top, sub] = path.split(".");
  if (top === "prices") return $(`set-price-${sub}`);
  if (top === "visit_hours") return $(sub === "start" ? "set-hours-start" : "set-hours-end");
  return $(`set-${top}`);
}

function clearFieldErrors() {
  for (const p of document.querySelectorAll("#settings-form p.field-error")) p.remove();
  for (const el of document.querySelectorAll("#settings-form [aria-invalid]")) {
    el.removeAttribute("aria-invalid");
    el.removeAttribute("aria-describedby");
  }
}

function showFieldErrors(fields) {
  clearFieldErrors();
  for (const f of fields) {
    const input = fieldInput(f.field);
    if (!input || input.getAttribute("aria-invalid")) continue;
    const id = `err-${input.id}`;
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", id);
    (input.closest("label.check") || input).after(h("p", { class: "field-error", id }, f.problem));
  }
}

async function loadFacilities() {
  const r = await api("GET", "/facilities");
  state.facilities = new Map(r.facilities.map((f) => [f.id, f]));
  rememberZones(r.facilities);
  if (!state.facility || !state.facilities.has(state.facility)) {
    state.facility = isAdmin() ? (r.facilities[0] || {}).id : state.me.facility_id;
  }
  $("facility-pick").hidden = !isAdmin();
  $("facility").replaceChildren(...r.facilities.map((f) => h("option", { value: f.id }, f.name)));
  $("facility").value = state.facility || "";
  showSettings();
}

$("facility").addEventListener("change", async () => {
  state.facility = $("facility").value;
  stopWatch();
  showSettings();
  await Promise.all([review.load(true), loadVisits(), audit.load(), loadRecordings()]).catch((e) => say($("notice"), e.message, "error"));
});

// ---------- watching a relayed visit (visit.watch, receive-only WebRTC) ----------
function socket() {
  if (!state.socket) {
    $("socket-state").hidden = false;
    let seen = false; // online once: a later "online" is a reconnection
    state.socket = new KinwireSocket({
      onEvent: onWatchEvent, onReset: async () => {},
      onUnauthorised: () => location.reload(),
      // The socket came back (maybe through another process: its own died, and with it,
      // perhaps, the visit's relay, which nobody would then tell us has moved): offer again.
      onState: (st) => {
        if (st !== "online") return;
        if (!seen) { seen = true; return; }
        const w = state.watch;
        if (w && w.pc) offerWatch(w).catch((e) => { if (state.watch === w) say($("watch-notice"), e.message, "error"); });
      },
    }).start();
  }
  return state.socket;
}

async function online(s, ms = 10000) {
  const until = Date.now() + ms;
  while (s.state !== "online") {
    if (Date.now() > until) throw new Error("The live connection could not be opened.");
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function startWatch(v, who) {
  stopWatch();
  $("watch").hidden = false;
  $("watch-h").textContent = `Watching the visit of ${who}`;
  say($("watch-notice"), "Connecting…");
  $("watch-h").focus();
  const w = { visitId: v.id, pc: null, audios: [], relay: null, movedTo: null };
  state.watch = w;
  try {
    await offerWatch(w);
    await audit.load();
  } catch (err) {
    if (state.watch === w) say($("watch-notice"), err.message, "error");
  }
}

// One receive-only peer connection with the relay, offered to it (a new one replaces the
// watch's previous one: the relay moved to another process, docs/visits.md "Relay failover").
async function offerWatch(w) {
  const s = socket();
  await online(s);
  const first = await s.request("visit.watch", { visit_id: w.visitId });
  if (state.watch !== w) return;
  const pc = new RTCPeerConnection({ iceServers: first.ice_servers || [],
    iceTransportPolicy: first.ice_transport_policy === "relay" ? "relay" : "all" });
  if (w.pc) w.pc.close();
  for (const a of w.audios) a.srcObject = null;
  w.pc = pc;
  w.audios = [];
  const videos = [$("watch-family"), $("watch-person")];
  for (const kind of ["video", "video", "audio", "audio"]) pc.addTransceiver(kind, { direction: "recvonly" });
  // The server fills video m-lines family then person, audio likewise (docs/visits.md).
  pc.ontrack = (ev) => {
    const index = pc.getTransceivers().indexOf(ev.transceiver);
    const stream = new MediaStream([ev.track]);
    if (index < 2) videos[index].srcObject = stream;
    else {
      const a = new Audio();
      a.srcObject = stream;
      a.muted = $("watch-sound").getAttribute("aria-pressed") !== "true";
      a.play().catch(() => {});
      w.audios.push(a);
    }
  };
  pc.onconnectionstatechange = () => {
    if (w.pc !== pc) return;
    const st = pc.connectionState;
    say($("watch-notice"), { connected: "Live.", failed: "The media could not connect.",
                              disconnected: "Media interrupted…" }[st] || st);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  if (w.pc !== pc || state.watch !== w) return;
  await s.request("visit.watch", { visit_id: w.visitId, description: { type: "offer", sdp: pc.localDescription.sdp } });
  say($("watch-notice"), "Waiting for the server's answer…");
}

function gathered(pc, ms = 3000) {
  // Send one offer with every candidate: the watch op takes trickled candidates too, but one
  // offer is simpler and the gathering is on the facility's own network.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ms);
  });
}

async function onWatchEvent(type, data) {
  const w = state.watch;
  if (!w || data.visit_id !== w.visitId) return;
  if (type === "visit.signal" && data.from === "server" && data.description) {
    const pc = w.pc;
    if (!pc || pc.signalingState !== "have-local-offer") return; // an answer to an older offer
    if (data.relay) w.relay = data.relay; // who answered us
    await pc.setRemoteDescription(data.description).catch((e) => say($("watch-notice"), e.message, "error"));
  } else if (type === "visit.relay_moved") {
    // The relay's process died or is draining and another took the visit: offer to it at
    // once, as the parties do (visit.js onRelayMoved). Several processes may say so.
    if (!data.relay || data.relay === w.relay || data.relay === w.movedTo) return;
    w.movedTo = data.relay;
    say($("watch-notice"), "The relay moved; reconnecting…");
    offerWatch(w).catch((e) => { if (state.watch === w) say($("watch-notice"), e.message, "error"); });
  } else if (type === "visit.ended") {
    stopWatch(`The visit ended (${(data.reason || "ended").replace(/_/g, " ")}).`);
    loadVisits().catch(() => {});
  }
}

function stopWatch(message) {
  const w = state.watch;
  state.watch = null;
  if (w) {
    if (w.pc) w.pc.close();
    for (const a of w.audios || []) a.srcObject = null;
  }
  for (const id of ["watch-family", "watch-person"]) $(id).srcObject = null;
  if (message) say($("watch-notice"), message);
  else $("watch").hidden = true;
}
$("watch-stop").addEventListener("click", () => stopWatch());
$("watch-sound").addEventListener("click", () => {
  const on = $("watch-sound").getAttribute("aria-pressed") !== "true";
  $("watch-sound").setAttribute("aria-pressed", String(on));
  $("watch-sound").textContent = on ? "Sound off" : "Sound on";
  for (const a of (state.watch && state.watch.audios) || []) a.muted = !on;
});

function poll() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    if (document.visibilityState !== "hidden") {
      await Promise.all([review.load(), loadVisits()]).catch(() => {});
    }
    poll();
  }, POLL_MS);
}

async function start() {
  const me = await api("GET", "/me");
  if (me.account.role !== "staff" && me.account.role !== "admin") {
    throw new Error("This console is for facility staff.");
  }
  state.me = me.account;
  state.names.set(me.account.id, me.account.name); // "by <you>" in the audit log
  $("me-name").textContent = me.account.name;
  $("login-form").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  await Promise.all([loadNames(), loadFacilities()]);
  await Promise.all([review.load(true), loadVisits(), audit.load(), loadRecordings()]);
  poll();
  window.kinwire = state; // for tests and the curious
  document.body.dataset.ready = "signed-in";
}

(async () => {
  try {
    await start();
  } catch (err) {
    $("login-form").hidden = false;
    if (state.me === null && err.status !== 401) say($("login-notice"), err.message, "error");
    document.body.dataset.ready = "signed-out";
  }
})();
