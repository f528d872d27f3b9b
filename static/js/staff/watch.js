// Watching a relayed visit from the staff console (visit.watch, receive-only WebRTC). The
// socket is opened only for this, at the first Watch.
import { $, say } from "../dom.js";
import { JanusParty } from "../janus.js";
import { KinwireSocket } from "../socket.js";

const AGAIN_MS = 1000;
const AGAIN_MAX = 60; // a minute of asks before the console says why it gave up

export class Watch {
  /** `audit` (audit.js) is read again once watching starts (the server logs it);
   * `onEnded()` when the visit watched ends. */
  constructor({ audit, onEnded }) {
    Object.assign(this, { audit, onEnded });
    this.socket = null;
    this.watch = null; // {visitId, pc, audios, relay, movedTo} while one is watched
    $("watch-stop").addEventListener("click", () => this.stop());
    $("watch-sound").addEventListener("click", () => this.toggleSound());
  }

  /** The socket, opened on first use. */
  open() {
    if (!this.socket) {
      $("socket-state").hidden = false;
      let seen = false; // online once: a later "online" is a reconnection
      this.socket = new KinwireSocket({
        onEvent: (type, data) => this.onEvent(type, data), onReset: async () => {},
        onUnauthorised: () => location.reload(),
        // The socket came back (maybe through another process: its own died, and with it,
        // perhaps, the visit's relay, which nobody would then tell us has moved): offer again.
        onState: (st) => {
          if (st !== "online") return;
          if (!seen) { seen = true; return; }
          const w = this.watch;
          if (w && (w.pc || w.party)) this.offer(w).catch((e) => this.failed(w, e));
        },
      }).start();
    }
    return this.socket;
  }

  failed(w, err) {
    if (this.watch === w) say($("watch-notice"), err.message, "error");
  }

  async start(v, who) {
    this.stop();
    $("watch").hidden = false;
    $("watch-h").textContent = `Watching the visit of ${who}`;
    say($("watch-notice"), "Connecting…");
    $("watch-h").focus();
    const w = { visitId: v.id, pc: null, party: null, audios: [], relay: null, movedTo: null };
    this.watch = w;
    try {
      await this.offer(w);
      await this.audit.load();
    } catch (err) {
      this.failed(w, err);
    }
  }

  // One receive-only peer connection with the relay, offered to it (a new one replaces the
  // watch's previous one: the relay moved to another process, docs/visits.md "Relay failover").
  async offer(w) {
    const s = this.open();
    await online(s);
    const first = await s.request("visit.watch", { visit_id: w.visitId });
    if (this.watch !== w) return;
    const config = { iceServers: first.ice_servers || [],
      iceTransportPolicy: first.ice_transport_policy === "relay" ? "relay" : "all" };
    if (first.janus) return this.watchJanus(w, first.janus, config);
    const pc = new RTCPeerConnection(config);
    this.drop(w);
    w.pc = pc;
    const videos = [$("watch-family"), $("watch-person")];
    for (const kind of ["video", "video", "audio", "audio"]) pc.addTransceiver(kind, { direction: "recvonly" });
    // The server fills video m-lines family then person, audio likewise (docs/visits.md).
    pc.ontrack = (ev) => {
      const index = pc.getTransceivers().indexOf(ev.transceiver);
      if (index < 2) videos[index].srcObject = new MediaStream([ev.track]);
      else this.listen(w, ev.track);
    };
    pc.onconnectionstatechange = () => {
      if (w.pc !== pc) return;
      const st = pc.connectionState;
      say($("watch-notice"), { connected: "Live.", failed: "The media could not connect.",
                                disconnected: "Media interrupted…" }[st] || st);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    if (w.pc !== pc || this.watch !== w) return;
    await s.request("visit.watch", { visit_id: w.visitId, description: { type: "offer", sdp: pc.localDescription.sdp } });
    say($("watch-notice"), "Waiting for the server's answer…");
  }

  // Relay mode on Janus: a subscriber of both parties' feeds in the visit's room (janus.js).
  // Its server lost (a failed request, or visit.media_lost): ask for the room again.
  async watchJanus(w, creds, config) {
    this.drop(w);
    const videos = { family: $("watch-family"), person: $("watch-person") };
    const party = new JanusParty(creds, {
      config,
      onTrack: (track, feed) => {
        if (w.party !== party) return;
        if (track.kind === "video") videos[feed].srcObject = new MediaStream([track]);
        else this.listen(w, track);
      },
      onState: (st) => {
        if (w.party === party) say($("watch-notice"), { connected: "Live.", failed: "The media could not connect.", disconnected: "Media interrupted…" }[st] || st);
      },
      onLost: () => { if (w.party === party) this.again(w); },
    });
    w.party = party;
    say($("watch-notice"), "Waiting for the media…");
    // A server Kinwire still names but that is dead refuses at once: lost, asked again.
    await party.start().catch(() => party.lose());
  }

  /** Ask Kinwire for the watch again (its media server was lost), one ask at a time. An ask
   * that fails (visit.watch refused while the room is being placed again) is repeated every
   * AGAIN_MS, up to AGAIN_MAX times; a loss during an ask (a dead server Kinwire still names
   * refuses the new session at once) asks again once it is over. */
  again(w, tries = 0) {
    if (this.watch !== w) return;
    if (w.asking) { w.askAgain = true; return; }
    w.asking = true;
    w.askAgain = false;
    say($("watch-notice"), "The media server was lost; reconnecting…");
    setTimeout(async () => {
      let failure = null;
      try {
        if (this.watch === w) await this.offer(w);
      } catch (err) {
        failure = err;
      }
      w.asking = false;
      if (this.watch !== w) return;
      if (failure && tries + 1 >= AGAIN_MAX) return this.failed(w, failure);
      if (failure || w.askAgain) this.again(w, failure ? tries + 1 : 0);
    }, AGAIN_MS);
  }

  /** The watch's media so far, closed: a new session replaces it. */
  drop(w) {
    if (w.pc) w.pc.close();
    if (w.party) w.party.close();
    w.pc = w.party = null;
    for (const a of w.audios) a.srcObject = null;
    w.audios = [];
  }

  listen(w, track) {
    const a = new Audio();
    a.srcObject = new MediaStream([track]);
    a.muted = $("watch-sound").getAttribute("aria-pressed") !== "true";
    a.play().catch(() => {});
    w.audios.push(a);
  }

  async onEvent(type, data) {
    const w = this.watch;
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
      this.offer(w).catch((e) => this.failed(w, e));
    } else if (type === "visit.media_lost" && w.party) {
      this.again(w);
    } else if (type === "visit.ended") {
      this.stop(`The visit ended (${(data.reason || "ended").replace(/_/g, " ")}).`);
      this.onEnded();
    }
  }

  /** Staff ended this visit from the list. */
  endedByStaff(visitId) {
    if (this.watch && this.watch.visitId === visitId) this.stop("The visit ended (ended by staff).");
  }

  stop(message) {
    const w = this.watch;
    this.watch = null;
    if (w) this.drop(w);
    for (const id of ["watch-family", "watch-person"]) $(id).srcObject = null;
    if (message) say($("watch-notice"), message);
    else $("watch").hidden = true;
  }

  toggleSound() {
    const on = $("watch-sound").getAttribute("aria-pressed") !== "true";
    $("watch-sound").setAttribute("aria-pressed", String(on));
    $("watch-sound").textContent = on ? "Sound off" : "Sound on";
    for (const a of (this.watch && this.watch.audios) || []) a.muted = !on;
  }
}

async function online(s, ms = 10000) {
  const until = Date.now() + ms;
  while (s.state !== "online") {
    if (Date.now() > until) throw new Error("The live connection could not be opened.");
    await new Promise((r) => setTimeout(r, 100));
  }
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
