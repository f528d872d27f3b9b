// The video visit screen (docs/clients.md, "Video visits"), shared by the family app and the
// kiosk: own camera preview, the other party's video, one RTCPeerConnection signalled over the
// socket with the visit.* ops (docs/visits.md, "The call"), the meter's ticks and warnings, and
// why the visit ended. The visit lists are visit_list.js; the meter's figures visit_meter.js.
//
// Trust (docs/visits.md): in direct mode the kiosk (side "person") is the authority on whether
// the call is connected. It reports `connected` only while the family's media keeps arriving
// (video frames decoded, or audio packets when the family sends no video) within the server's
// `media_gap_s`, and `disconnected` with `stalled_s` (how long ago the last frame came: the
// meter pauses from then) once it has not; and `sending`: whether its own outbound audio and
// video packet counts advanced within `media_stall_s`. All from getStats() every half second. The
// family's reports are advisory. Both sides show the link's quality (link_quality.js) from the
// same stats every LINK_MS; the kiosk adds it to its visit.media report when its level changes.
import { api } from "./api.js";
import { h, say } from "./dom.js";
import { JanusParty, sameRoom } from "./janus.js";
import { favourAudio, linkFigures, linkLevel } from "./link_quality.js";
import { CallCredits } from "./call_credits.js";
import { dayText, timeText } from "./time.js";
import { VisitMeter } from "./visit_meter.js";
import { t } from "./i18n.js";

export const ACTIVE = new Set(["scheduled", "open", "live", "paused"]);

/** Why a visit ended, in words; `byMe` when this side hung up. */
/**
 * What a party is told about recording and monitoring (issue 15: before joining and during the
 * call). Only relay-mode visits pass through the server, so only they can be recorded or
 * watched; a privileged connection's visit (`record` false) is not recorded.
 */
export function recordingNotice(v) {
  return v.media === "relay" && v.record ? t("visit.recorded") : t("visit.not_recorded");
}

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

const LINK_MS = 2000; // the link's figures are taken over this long

/**
 * One visit's call. `side` is "family" or "person"; `peer` the other party's name;
 * `balance` the family's balance when known (the family app), shown until the first tick.
 * `creditsForm`: the family app's purchase form (#buy-form), shown in a dialog by the call's
 * "Add credits" button: a top-up that neither ends nor reloads the call. The page's own
 * balance handling calls setBalance() with the new balance.
 */
export class VisitCall {
  constructor({ root, socket, visit, side, peer, balance = null, onClose, creditsForm = null }) {
    Object.assign(this, { root, socket, visit, side, peer, onClose, creditsForm });
    this.pc = null;
    this.janus = null; // relay mode on Janus: our party in the visit's room (janus.js)
    this.janusCreds = null; // the last join's `janus`
    this.pending = []; // candidates that came before the remote description
    this.local = null;
    this.remoteStream = null;
    this.reported = false; // "connected" told to the server for the current pc
    this.said = null; // the kiosk's last report: "state/sending"
    this.link = null; // the link's level on screen: {level, reason, text}
    this.linkNext = null; // a new level seen once, shown when the next reading agrees
    this.linkBefore = null; // linkFigures' last snapshot
    this.linkSaid = null; // what the kiosk last reported: linkKey() of it
    this.moved = {}; // getStats counter -> [value, when it last moved (ms)]
    this.relay = null; // relay mode: the server relay that answered our last offer
    this.movedTo = null; // relay mode: the relay we last offered to after a visit.relay_moved
    this.stallMs = 10000;
    this.gapMs = 2000; // the family's media stopped this long is an outage (media_gap_s)
    this.ended = null;
    this.byMe = false;
    this.media = visit.media;
    this.config = null;
    this.render(balance);
  }

  /** Every tick shown, for tests and support: [{paid, balance}]. */
  get ticks() {
    return this.meter.ticks;
  }

  // ---------- the screen ----------
  render(balance) {
    const them = this.peer || t("contact.yours_lower");
    const warning = h("p", { class: "notice visit-warning", role: "alert", id: "visit-warning" });
    this.meter = new VisitMeter({ side: this.side, price: this.visit.minute_price || 0, balance, warning });
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
    this.credits = this.side === "family" && this.creditsForm
      ? new CallCredits(this.creditsForm, () => Boolean(this.ended)) : null;
    e.mic.addEventListener("click", () => this.toggle("audio", e.mic, t("call.mute"), t("call.unmute")));
    e.cam.addEventListener("click", () => this.toggle("video", e.cam, t("call.camera_off"), t("call.camera_on")));
    e.hangup.addEventListener("click", () => this.hangUp());
    e.back.addEventListener("click", () => this.close());
    this.root.replaceChildren(h("section", { class: "card visit", "aria-labelledby": "visit-h",
                                              dataset: { visit: this.visit.id } },
      h("h2", { id: "visit-h", tabindex: "-1" }, t("call.title", { name: them })),
      h("p", { class: "visit-recording", id: "visit-recording", dataset: { recorded: String(this.visit.media === "relay" && Boolean(this.visit.record)) } },
        recordingNotice(this.visit)),
      e.status, e.ended,
      e.videos,
      e.link,
      this.meter.box,
      e.threshold,
      e.warning,
      h("div", { class: "row visit-controls" }, e.mic, e.cam, this.credits?.button, e.hangup, e.back),
      this.credits?.dialog));
    this.root.hidden = false;
    this.root.querySelector("#visit-h").focus(); // keyboard and screen-reader users land here
  }

  /** The family's balance changed outside the meter (a top-up in the call, a gift). */
  setBalance(n) {
    this.meter.setBalance(n);
  }

  setStatus(text, state) {
    this.el.status.textContent = text;
    if (state) this.root.dataset.call = state;
  }

  toggle(kind, button, onText, offText) {
    if (!this.local) return;
    const tracks = this.local.getTracks().filter((t) => t.kind === kind);
    const off = button.getAttribute("aria-pressed") !== "true";
    for (const t of tracks) t.enabled = !off;
    button.setAttribute("aria-pressed", String(off));
    button.textContent = off ? offText : onText;
  }

  // ---------- joining ----------
  async start() {
    try {
      this.local = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      this.el.local.srcObject = this.local;
    } catch (err) {
      // Still join: the other side may be seen and heard; ours is reported on screen.
      say(this.el.warning, t("call.no_camera", { why: err.name || err, name: this.peer }), "error");
    }
    this.watchSocket();
    await this.join();
  }

  async join() {
    this.setStatus(t("call.joining"), "joining");
    let j;
    this.joining = true; // visit.peer pushes meanwhile are kept in peerSeen, acted on below
    this.peerSeen = null;
    try {
      j = await this.socket.request("visit.join", { visit_id: this.visit.id });
      const ice = await api("GET", `/visits/${encodeURIComponent(this.visit.id)}/ice`);
      // The server decides: "relay" means TURN candidates only (docs/API.md extensions).
      this.config = { iceServers: ice.ice_servers,
                      iceTransportPolicy: ice.ice_transport_policy === "relay" ? "relay" : "all" };
    } catch (err) {
      if (err.code === "visit_over") return this.end(this.visit.end_reason || "time_up");
      this.setStatus(err.code === "too_early" ? t("error.too_early")
                                               : t("call.could_not_join", { why: err.message }), "error");
      this.failed = true; // not in the call: Back closes the screen
      this.el.back.hidden = false;
      this.el.hangup.hidden = true;
      return;
    } finally {
      this.joining = false;
    }
    this.visit = j.visit;
    this.status = j.visit.status;
    this.pauseReason = j.visit.pause_reason;
    this.media = j.media;
    this.janusCreds = j.janus || null;
    if (typeof j.media_stall_s === "number") this.stallMs = j.media_stall_s * 1000;
    if (typeof j.media_gap_s === "number") this.gapMs = j.media_gap_s * 1000;
    this.reporter = this.side === "person" && this.media !== "relay"; // the kiosk, direct mode
    this.el.threshold.textContent = t("call.threshold", { n: Math.round(this.stallMs / 1000) });
    if (!this.watcher) this.watcher = setInterval(() => this.checkMedia(), 500); // outages seen within ~2.5 s
    const m = this.meter;
    m.price = j.visit.minute_price || m.price;
    if (typeof j.minute_s === "number" && j.minute_s > 0) m.minuteS = j.minute_s;
    m.runs(this.status === "live");
    if (j.meter) m.show(j.meter.paid_minutes, j.meter.balance); // the server's, now
    if (this.janusCreds && this.janus && !this.janus.lost && sameRoom(this.janusCreds, this.janus.creds)) {
      // Back from a socket outage: our media never went through Kinwire; it goes on.
    } else if (this.media === "relay") {
      this.offer(); // relay mode: every party offers to the server at once (Janus: to Janus)
    } else if (this.side === "family" && (this.peerSeen ?? j.peer_present)) {
      this.offer(); // direct mode: the family offers, the person answers
    } else if (this.side === "person" && (this.peerSeen ?? j.peer_present)) {
      this.setStatus(t("call.peer_here", { name: this.peer }), "connecting");
    } else {
      this.setStatus(t("call.waiting", { name: this.peer }), "waiting");
    }
  }

  /** After the socket reconnects the server has dropped us from the visit: join again. */
  watchSocket() {
    let wasOffline = false;
    this.socket.urgent = true; // in a call: reconnect within seconds of the network's return
    this.observer = new MutationObserver(() => {
      const s = document.documentElement.dataset.socket;
      if (s === "offline" && !wasOffline && !this.ended) {
        this.setStatus(t("call.server_lost"), "reconnecting");
      }
      if (s === "offline") wasOffline = true;
      if (s === "online" && wasOffline && !this.ended) {
        wasOffline = false;
        if (!this.janus) this.closePc(); // a Janus room's media is not Kinwire's: it goes on
        this.join();
      }
    });
    this.observer.observe(document.documentElement, { attributes: true, attributeFilter: ["data-socket"] });
  }

  // ---------- WebRTC ----------
  newPc() {
    const pc = new RTCPeerConnection(this.config);
    this.fresh(pc);
    this.pc = pc;
    if (this.local) {
      for (const t of this.local.getTracks()) favourAudio(pc.addTrack(t, this.local));
    } else {
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    pc.onicecandidate = (ev) => {
      if (ev.candidate && ev.candidate.candidate && pc === this.pc) this.signal({ candidate: ev.candidate.toJSON() });
    };
    pc.ontrack = (ev) => {
      if (pc !== this.pc) return;
      this.remoteStream.addTrack(ev.track);
      this.el.remote.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => this.pcState(pc);
    return pc;
  }

  /** A new media session (a peer connection, or a Janus party): what the last one measured
   * is forgotten, and the remote picture starts empty. */
  fresh(session) {
    this.closePc();
    const wasLive = this.reporter && this.said && this.said.startsWith("connected/");
    this.session = session;
    this.pending = [];
    this.reported = false;
    this.said = null;
    this.moved = {};
    this.link = this.linkBefore = this.linkNext = this.linkSaid = null; // measured afresh
    this.el.linkLevel.textContent = t("link.measuring");
    this.el.linkReason.textContent = "";
    delete this.el.link.dataset.level;
    // The kiosk: the old session's media is gone with it, and a new one may never connect.
    if (wasLive) this.media_("disconnected", undefined, 0);
    this.remoteStream = new MediaStream();
    this.el.remote.srcObject = this.remoteStream;
  }

  closePc() {
    const party = this.janus;
    this.janus = this.session = null;
    if (party) party.close();
    if (!this.pc) return;
    const pc = this.pc;
    this.pc = null;
    pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
    pc.close();
  }

  // ---------- relay mode on Janus (janus.js) ----------
  startJanus() {
    const party = new JanusParty(this.janusCreds, {
      config: this.config, local: this.local, prepare: favourAudio,
      onTrack: (track) => {
        if (party !== this.janus) return;
        for (const old of this.remoteStream.getTracks().filter((x) => x.kind === track.kind)) {
          this.remoteStream.removeTrack(old); // the other party published again
        }
        this.remoteStream.addTrack(track);
        this.el.remote.play().catch(() => {});
      },
      onState: () => this.pcState(party),
      onLost: () => setTimeout(() => this.janusRejoin(party), 500), // a dead server refuses at once
    });
    this.fresh(party);
    this.janus = party;
    this.setStatus(t("call.connecting", { name: this.peer }), "connecting");
    party.start().catch(() => party.lose());
  }

  /** Our Janus server stopped answering, or Kinwire says it died (visit.media_lost): join
   * again and start where Kinwire now places the room. Until Kinwire sees the server dead it
   * names the same room, which refuses: lost again, tried again half a second later. */
  async janusRejoin(party) {
    if (this.ended || party !== this.janus) return;
    let j;
    try {
      j = await this.socket.request("visit.join", { visit_id: this.visit.id });
    } catch (err) {
      if (err.code === "visit_over") return this.end(this.visit.end_reason || "time_up");
      if (party === this.janus) setTimeout(() => this.janusRejoin(party), 500);
      return;
    }
    if (this.ended || party !== this.janus) return;
    this.janusCreds = j.janus || null;
    if (!party.lost && sameRoom(this.janusCreds, party.creds)) return; // a late push: all is well
    if (this.janusCreds) this.startJanus();
  }

  async offer() {
    if (this.janusCreds) return this.startJanus(); // Janus answers our offer itself
    const pc = this.newPc();
    this.setStatus(t("call.connecting", { name: this.peer }), "connecting");
    try {
      await pc.setLocalDescription(await pc.createOffer());
      if (pc !== this.pc) return;
      await this.signal({ description: { type: "offer", sdp: pc.localDescription.sdp } });
    } catch (err) {
      if (pc === this.pc) this.setStatus(t("call.could_not_start", { why: err.message }), "error");
    }
  }

  async answer(description) {
    const pc = this.newPc(); // a new offer is a new session (the other side rejoined)
    this.setStatus(t("call.connecting", { name: this.peer }), "connecting");
    try {
      await pc.setRemoteDescription(description);
      await this.flush(pc);
      await pc.setLocalDescription(await pc.createAnswer());
      if (pc !== this.pc) return;
      await this.signal({ description: { type: "answer", sdp: pc.localDescription.sdp } });
    } catch (err) {
      if (pc === this.pc) this.setStatus(t("call.could_not_answer", { why: err.message }), "error");
    }
  }

  async flush(pc) {
    const held = this.pending;
    this.pending = [];
    for (const c of held) await pc.addIceCandidate(c).catch(() => {});
  }

  async signal(args) {
    try {
      await this.socket.request("visit.signal", { visit_id: this.visit.id, ...args });
    } catch {
      // The visit ended or the socket dropped: the end or the rejoin takes it from here.
    }
  }

  async pcState(pc) {
    if (pc !== this.session || this.ended) return;
    const s = pc.connectionState;
    if (s === "connected" && !this.reported) {
      this.reported = true;
      // After an outage the server may have said the visit is live again before this peer
      // connection noticed it was back: keep saying the meter runs, not just "Connected".
      if (this.status === "live") {
        this.setStatus(t("call.connected_live", { name: this.peer }), "live");
      } else {
        this.setStatus(t("call.connected", { name: this.peer }), "connected");
      }
      if (!this.reporter) await this.media_("connected"); // the kiosk reports from its stats
    } else if ((s === "disconnected" || s === "failed") && this.reported) {
      this.reported = false;
      // Already counting the seconds without a picture: keep counting, not a flicker to
      // "lost" and back on the next stats read.
      if (!this.showTrouble()) {
        this.setStatus(t("call.peer_lost", { name: this.peer }), "reconnecting");
      }
      if (!this.reporter) await this.media_("disconnected"); // the kiosk's stats say when
    }
    // The offering side starts a new session when the path has failed for good (also when
    // it never connected: two offers crossed and an answer met the wrong session).
    if (s === "failed" && pc === this.session && (this.media === "relay" || this.side === "family")) {
      setTimeout(() => { if (pc === this.session && !this.ended) this.offer(); }, 1000);
    }
  }

  async media_(state, sending, stalledS, link) {
    const args = { visit_id: this.visit.id, state };
    if (typeof sending === "boolean") args.sending = sending;
    if (typeof stalledS === "number") args.stalled_s = Math.round(stalledS * 1000) / 1000;
    if (link) {
      args.quality = link.level;
      // At most the server's 80 characters: a refused report would lose the state with it.
      if (link.reason) args.quality_reason = link.reason.slice(0, 80);
      this.linkSaid = linkKey(link);
    }
    this.said = `${state}/${sending}`;
    try {
      await this.socket.request("visit.media", args);
    } catch {
      // not_in_call once it has ended: nothing to report.
    }
  }

  /** Whether getStats counter `name` moved within `withinMs` (the stall threshold by
   * default) and ever moved. */
  advancing(name, value, now, withinMs = this.stallMs) {
    const [seen, at] = this.moved[name] || [0, now];
    this.moved[name] = value !== seen ? [value, now] : [seen, at];
    return value > 0 && now - this.moved[name][1] <= withinMs;
  }

  /** The kiosk's view of the call (direct mode), reported whenever it changes. The family's
   * media is its picture (frames decoded) when it sends video, else its audio: frames that
   * stop for media_gap_s are an outage, reported with how long ago the last one came, and the
   * call is connected again only when frames move again (not when ICE reconnects). */
  async checkMedia() {
    const pc = this.session; // a peer connection, or a Janus party (its stats merged)
    if (!pc || !["connected", "disconnected", "failed"].includes(pc.connectionState) || this.ended) return;
    const stats = await pc.getStats();
    if (pc !== this.session) return;
    let frames = 0, audio = 0;
    const sent = {};
    stats.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") frames += r.framesDecoded || 0;
      if (r.type === "inbound-rtp" && r.kind === "audio") audio += r.packetsReceived || 0;
      if (r.type === "outbound-rtp") sent[r.kind] = (sent[r.kind] || 0) + (r.packetsSent || 0);
    });
    const now = performance.now();
    const video = this.advancing("frames", frames, now, this.gapMs);
    const heard = this.advancing("audio", audio, now, this.gapMs);
    const decisive = frames > 0 ? "frames" : "audio";
    const receiving = frames > 0 ? video : heard;
    const kinds = Object.keys(sent);
    let sending = kinds.length > 0; // no camera or microphone at all: nothing is sent
    for (const kind of kinds) sending = this.advancing(`sent ${kind}`, sent[kind], now) && sending;
    const moved = this.moved[decisive];
    this.stillS = receiving || !moved ? 0 : (now - moved[1]) / 1000;
    this.showTrouble();
    this.measureLink(stats, now);
    // The kiosk tells the server a new level (staff see it); in relay mode with the state its
    // connection last reported, which the server does not bill by.
    const link = this.side === "person" && this.link && linkKey(this.link) !== this.linkSaid ? this.link : undefined;
    if (!this.reporter) {
      if (link && this.reported) await this.media_("connected", undefined, undefined, link);
      return;
    }
    const state = receiving ? "connected" : "disconnected";
    if (this.said === `${state}/${sending}` && !link) return;
    await this.media_(state, sending, receiving || !moved ? undefined : this.stillS, link);
  }

  /** The link line, from the stats checkMedia took: every LINK_MS, a level shown once two
   * readings in a row agree (a moment's dip neither flickers nor is announced). */
  measureLink(stats, now) {
    if (this.linkBefore && now - this.linkBefore.at < LINK_MS) return;
    const video = this.local && this.local.getVideoTracks().some((t) => t.enabled);
    const { figures, snapshot } = linkFigures(stats, this.linkBefore, now, video);
    this.linkBefore = snapshot;
    if (!figures) return;
    const seen = linkLevel(figures);
    if (!seen.level) return;
    const shown = this.link && this.link.level;
    if (shown === null || shown === seen.level || this.linkNext === seen.level) {
      this.link = seen;
      this.linkNext = null;
      this.el.link.dataset.level = seen.level;
      if (shown !== seen.level) this.el.linkLevel.textContent = seen.label;
      this.el.linkReason.textContent = seen.reason ? `(${seen.reason})` : "";
    } else {
      this.linkNext = seen.level;
    }
  }

  /** The status line during trouble, from what this page sees (no picture for how long) and
   * what the server said (paused, so nobody is charged) or could not say (socket offline).
   * True if it said something. */
  showTrouble() {
    if (this.ended || this.stillS < this.gapMs / 1000) return false;
    const n = Math.floor(this.stillS);
    const offline = document.documentElement.dataset.socket !== "online";
    if (offline) {
      this.setStatus(t("call.no_picture_offline", { name: this.peer, n }), "reconnecting");
    } else if (this.status === "paused" && this.pauseReason === "not_connected") {
      this.setStatus(this.side === "family"
        ? t("call.paused_family", { name: this.peer, n })
        : t("call.paused_person", { name: this.peer, n }),
      "paused");
    } else {
      return false;
    }
    return true;
  }

  // ---------- pushes ----------
  onEvent(type, data) {
    if (type === "visit.updated") {
      if (data.id !== this.visit.id) return;
      this.status = data.status;
      this.pauseReason = data.pause_reason;
      this.meter.runs(data.status === "live");
      if (!ACTIVE.has(data.status)) this.end(data.end_reason);
      else if (data.pause_reason === "person_not_sending" && !this.ended) {
        // Both screens say why the meter stopped (docs/visits.md, "Trust").
        this.setStatus(this.side === "person"
          ? t("call.not_sending_person")
          : t("call.not_sending_family"),
        "stalled");
      }
      return;
    }
    if (!data || data.visit_id !== this.visit.id || this.ended) return;
    if (type === "visit.signal") this.onSignal(data);
    else if (type === "visit.peer") this.onPeer(data.present);
    else if (type === "visit.relay_moved") this.onRelayMoved(data.relay);
    else if (type === "visit.media_lost" && this.janus) this.janusRejoin(this.janus);
    else if (type === "visit.tick") this.meter.tick(data, this.status);
    else if (type === "visit.warning") this.meter.warn(data.kind);
    else if (type === "visit.live") {
      this.status = "live";
      this.meter.runs(true);
      this.setStatus(t("call.connected_live", { name: this.peer }), "live");
    }
    else if (type === "visit.ended") this.end(data.reason);
  }

  // Relay mode: the server process relaying this visit died or is draining; another took it
  // (docs/visits.md, "Relay failover"). Offer to it at once rather than wait for ICE to find
  // the old one gone. Several processes may say so: once per new relay.
  onRelayMoved(relay) {
    if (this.media !== "relay" || !relay || relay === this.relay || relay === this.movedTo) return;
    this.movedTo = relay;
    this.offer();
  }

  onSignal(data) {
    const d = data.description;
    if (data.from === "server" && data.relay) this.relay = data.relay; // who answered us
    if (d && d.type === "offer" && this.media !== "relay") this.answer(d);
    else if (d && d.type === "answer") {
      const pc = this.pc;
      if (pc && pc.signalingState === "have-local-offer") {
        // An answer that does not fit (it answered an older offer) makes the page offer again.
        pc.setRemoteDescription(d).then(() => this.flush(pc))
          .catch(() => { if (pc === this.pc && !this.ended) this.offer(); });
      }
    } else if (data.candidate) {
      if (this.pc && this.pc.remoteDescription) this.pc.addIceCandidate(data.candidate).catch(() => {});
      else this.pending.push(data.candidate);
    }
  }

  onPeer(present) {
    if (this.media === "relay") return; // the server is our peer in relay mode
    if (this.joining) {
      this.peerSeen = present; // the newest word on the peer, once our join is through
      return;
    }
    if (present) {
      if (this.side === "family") this.offer();
      else this.setStatus(`${this.peer} joined; connecting…`, "connecting");
    } else {
      if (this.reported) this.media_("disconnected"); // our side of the path is gone too
      this.closePc();
      this.setStatus(t("call.peer_left", { name: this.peer }), "waiting");
    }
  }

  // ---------- the end ----------
  async hangUp() {
    this.byMe = true;
    this.el.hangup.disabled = true;
    try {
      await this.socket.request("visit.leave", { visit_id: this.visit.id });
    } catch {
      // Over already, or offline: either way this side is done.
    }
    this.end("hung_up");
  }

  end(reason) {
    if (this.ended) return;
    this.ended = reason || "ended";
    this.cleanup();
    const text = endedText(reason, { byMe: this.byMe, peer: this.peer,
                                     payer: this.side === "family" ? "your" : "the family's" });
    const paid = this.meter.paid;
    this.setStatus(t("call.ended_after", { n: paid }), "ended");
    this.el.videos.hidden = this.meter.leftBox.hidden = this.el.link.hidden = true;
    this.el.ended.textContent = text;
    this.el.ended.dataset.reason = this.ended;
    this.el.ended.hidden = false;
    this.el.hangup.hidden = this.el.mic.hidden = this.el.cam.hidden = true;
    if (this.credits) this.credits.close();
    this.el.back.hidden = false;
    this.el.ended.focus();
  }

  cleanup() {
    if (this.socket) this.socket.urgent = false;
    if (this.credits) this.credits.close(); // the purchase form goes back to the app
    this.meter.stop();
    clearInterval(this.watcher);
    if (this.observer) this.observer.disconnect();
    this.closePc();
    if (this.local) for (const t of this.local.getTracks()) t.stop();
    this.el.remote.srcObject = null;
    this.el.local.srcObject = null;
  }

  close() {
    if (!this.ended && !this.failed) return; // in a call: Hang up first
    this.cleanup();
    this.root.hidden = true;
    this.root.replaceChildren();
    if (this.onClose) this.onClose(this);
  }
}

/** What makes a new link report worth sending: a new level, or a reason where there was none
 * (the first level can be judged before the frame rate is measured; without this the staff
 * console kept "Link: Good" with no reason for the whole call). Not every new figure. */
function linkKey(link) {
  return `${link.level}${link.reason ? "+" : ""}`;
}
