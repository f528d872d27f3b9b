// Watching a relayed visit from the staff console (visit.watch, receive-only WebRTC). The
// socket is opened only for this, at the first Watch.
import { $, say } from "../dom.js";
import { KinwireSocket } from "../socket.js";

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
          if (w && w.pc) this.offer(w).catch((e) => this.failed(w, e));
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
    const w = { visitId: v.id, pc: null, audios: [], relay: null, movedTo: null };
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
    if (w.pc !== pc || this.watch !== w) return;
    await s.request("visit.watch", { visit_id: w.visitId, description: { type: "offer", sdp: pc.localDescription.sdp } });
    say($("watch-notice"), "Waiting for the server's answer…");
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
    if (w) {
      if (w.pc) w.pc.close();
      for (const a of w.audios || []) a.srcObject = null;
    }
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
