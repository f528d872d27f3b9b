// A video visit's call (docs/clients.md, "Video visits"), shared by the family app and the
// kiosk: joining, one RTCPeerConnection signalled over the socket with the visit.* ops
// (docs/visits.md, "The call") or a Janus party (janus.js), the pushes, and the end. What it
// shows is visit/screen.js's; what its statistics say, visit/media_watch.js's. The visit lists
// are visit_list.js; the meter's figures visit_meter.js.
//
// Trust (docs/visits.md): in direct mode the kiosk (side "person") is the authority on whether
// the call is connected. It reports `connected` only while the family's media keeps arriving
// (video frames decoded, or audio packets when the family sends no video) within the server's
// `media_gap_s`, and `disconnected` with `stalled_s` (how long ago the last frame came: the
// meter pauses from then) once it has not; and `sending`: whether its own outbound audio and
// video packet counts advanced within `media_stall_s`. All from getStats() every half second. The
// family's reports are advisory. Both sides show the link's quality (link_quality.js) from the
// same stats every couple of seconds; the kiosk adds it to its visit.media report when its
// level changes.
import { api } from "./api.js";
import { JanusParty, sameRoom } from "./janus.js";
import { favourAudio } from "./link_quality.js";
import { MediaWatch, linkKey } from "./visit/media_watch.js";
import { VisitScreen, endedText } from "./visit/screen.js";
import { t } from "./i18n.js";

export const ACTIVE = new Set(["scheduled", "open", "live", "paused"]);

/**
 * One visit's call. `side` is "family" or "person"; `peer` the other party's name;
 * `balance` the family's balance when known (the family app), shown until the first tick.
 * `creditsForm`: the family app's purchase form (#buy-form), shown in a dialog by the call's
 * "Add credits" button: a top-up that neither ends nor reloads the call. The page's own
 * balance handling calls setBalance() with the new balance.
 */
export class VisitCall {
  constructor({ root, socket, visit, side, peer, balance = null, onClose, creditsForm = null }) {
    Object.assign(this, { socket, visit, side, peer, onClose }); // root and form: the screen's
    this.pc = null;
    this.janus = null; // relay mode on Janus: our party in the visit's room (janus.js)
    this.janusCreds = null; // the last join's `janus`
    this.pending = []; // candidates that came before the remote description
    this.local = null;
    this.remoteStream = null;
    this.reported = false; // "connected" told to the server for the current pc
    this.said = null; // the kiosk's last report: "state/sending"
    this.linkSaid = null; // what the kiosk last reported: linkKey() of it
    this.watch = new MediaWatch();
    this.relay = null; // relay mode: the server relay that answered our last offer
    this.movedTo = null; // relay mode: the relay we last offered to after a visit.relay_moved
    this.ended = null;
    this.byMe = false;
    this.media = visit.media;
    this.config = null;
    this.screen = new VisitScreen({
      root, visit, side, peer, balance, creditsForm, isOver: () => Boolean(this.ended),
      on: { hangUp: () => this.hangUp(), back: () => this.close(),
            toggle: (kind, off) => this.toggle(kind, off) },
    });
    this.meter = this.screen.meter;
  }

  /** Every tick shown, for tests and support: [{paid, balance}]. */
  get ticks() {
    return this.meter.ticks;
  }

  /** The family's balance changed outside the meter (a top-up in the call, a gift). */
  setBalance(n) {
    this.meter.setBalance(n);
  }

  setStatus(text, state) {
    this.screen.setStatus(text, state);
  }

  /** Our microphone or camera off (or on again); false when there is none. */
  toggle(kind, off) {
    if (!this.local) return false;
    for (const track of this.local.getTracks().filter((x) => x.kind === kind)) track.enabled = !off;
    return true;
  }

  // ---------- joining ----------
  async start() {
    try {
      this.local = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      this.screen.showOwn(this.local);
    } catch (err) {
      // Still join: the other side may be seen and heard; ours is reported on screen.
      this.screen.warn(t("call.no_camera", { why: err.name || err, name: this.peer }));
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
      this.failed = true; // not in the call: Back closes the screen
      this.screen.failed(err.code === "too_early" ? t("error.too_early")
                                                  : t("call.could_not_join", { why: err.message }));
      return;
    } finally {
      this.joining = false;
    }
    this.visit = j.visit;
    this.status = j.visit.status;
    this.pauseReason = j.visit.pause_reason;
    this.media = j.media;
    this.janusCreds = j.janus || null;
    if (typeof j.media_stall_s === "number") this.watch.stallMs = j.media_stall_s * 1000;
    if (typeof j.media_gap_s === "number") this.watch.gapMs = j.media_gap_s * 1000;
    this.reporter = this.side === "person" && this.media !== "relay"; // the kiosk, direct mode
    this.screen.showThreshold(this.watch.stallMs);
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
      this.screen.playTheirs();
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
    this.said = this.linkSaid = null;
    this.watch.forget(); // measured afresh
    this.screen.measuringLink();
    // The kiosk: the old session's media is gone with it, and a new one may never connect.
    if (wasLive) this.media_("disconnected", undefined, 0);
    this.remoteStream = new MediaStream();
    this.screen.showTheirs(this.remoteStream);
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
        this.screen.playTheirs();
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

  /** The call's media as its statistics say (media_watch.js), every half second: the trouble
   * line and the link line, and the kiosk's reports (direct mode): the family's media that
   * stops for media_gap_s is an outage, reported with how long ago the last of it came; the
   * call is connected again only when it moves again (not when ICE reconnects). */
  async checkMedia() {
    const pc = this.session; // a peer connection, or a Janus party (its stats merged)
    if (!pc || !["connected", "disconnected", "failed"].includes(pc.connectionState) || this.ended) return;
    const stats = await pc.getStats();
    if (pc !== this.session) return;
    const now = performance.now();
    const { receiving, sending, stalledS } = this.watch.read(stats, now);
    this.showTrouble();
    const video = this.local && this.local.getVideoTracks().some((x) => x.enabled);
    if (this.watch.measureLink(stats, now, video)) this.screen.showLink(this.watch.link);
    // The kiosk tells the server a new level (staff see it); in relay mode with the state its
    // connection last reported, which the server does not bill by.
    const seen = this.watch.link;
    const link = this.side === "person" && seen && linkKey(seen) !== this.linkSaid ? seen : undefined;
    if (!this.reporter) {
      if (link && this.reported) await this.media_("connected", undefined, undefined, link);
      return;
    }
    const state = receiving ? "connected" : "disconnected";
    if (this.said === `${state}/${sending}` && !link) return;
    await this.media_(state, sending, stalledS, link);
  }

  /** The status line during trouble, from what this page sees (no picture for how long) and
   * what the server said (paused, so nobody is charged) or could not say (socket offline).
   * True if it said something. */
  showTrouble() {
    const stillS = this.watch.stillS;
    if (this.ended || stillS < this.watch.gapMs / 1000) return false;
    const n = Math.floor(stillS);
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
    this.screen.hangingUp();
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
    this.screen.ended(this.ended, endedText(reason, {
      byMe: this.byMe, peer: this.peer, payer: this.side === "family" ? "your" : "the family's" }));
  }

  cleanup() {
    if (this.socket) this.socket.urgent = false;
    clearInterval(this.watcher);
    if (this.observer) this.observer.disconnect();
    this.closePc();
    if (this.local) for (const track of this.local.getTracks()) track.stop();
    this.screen.stop();
  }

  close() {
    if (!this.ended && !this.failed) return; // in a call: Hang up first
    this.cleanup();
    this.screen.close();
    if (this.onClose) this.onClose(this);
  }
}
