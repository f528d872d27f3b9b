// Relay mode on Janus (KINWIRE_MEDIA_ENGINE=janus; docs/API.md, "Relay mode on Janus"): a
// visit's media through the Janus server that visit.join (or visit.watch) names in its `janus`
// credentials, on Janus's JSON API over HTTP: a handful of requests, no library, no build step.
// The same steps as the reference client (signalling/janus_party.py):
// 1. a Janus session, every request carrying the party's signed token;
// 2. a publisher handle joins the visit's room as the party's feed and publishes the camera and
//    microphone (our offer, Janus's answer; our candidates trickled);
// 3. every other publisher of the room gets a subscriber handle: Janus offers that feed's
//    streams, we answer and `start`; one that unpublishes loses it, one that publishes again
//    gets a new one. Staff (no feed) only subscribe, to both parties' feeds, and try a feed again
//    every RESUBSCRIBE_MS while it is not there (a party not yet published, or published anew,
//    as after a move to another server: a subscriber hears of no publishers);
// 4. events come on the session's long poll. A failed request or poll (the server is gone), or
//    Janus hanging up our publisher, calls `onLost` once: the screen asks Kinwire again.
const VIDEOROOM = "janus.plugin.videoroom";
const KEEPALIVE_MS = 25000; // well inside Janus's 60 s session timeout
const PARTIES = ["family", "person"];
const RESUBSCRIBE_MS = 1000;
const PENDING_MS = 4000;

export class JanusParty {
  /** `creds`: {server, room, pin, token, feed}; `config`: the RTCPeerConnection configuration
   * (Kinwire's ICE servers); `local`: the camera's stream or null; `onTrack(track, feed)`,
   * `onState(state)` (the publisher's connection state; a watcher's first subscription's),
   * `onLost()`. */
  constructor(creds, { config, local = null, onTrack, onState = () => {}, onLost = () => {},
                       prepare = () => {} }) {
    Object.assign(this, { creds, config, local, onTrack, onState, onLost, prepare });
    this.server = creds.server.replace(/\/$/, "");
    this.feed = creds.feed || null;
    this.publisher = null;
    this.subscribers = new Map(); // feed -> its RTCPeerConnection
    this.handles = new Map(); // subscriber handle id -> the feed it receives
    this.pending = new Map(); // feed -> {handle, at}: joined as its subscriber, not yet offered
    this.closed = this.lost = false;
    this.session = null;
  }

  /** The connection state the screen shows: our publisher's; a watcher's first subscription's. */
  get connectionState() {
    const pc = this.publisher || this.subscribers.values().next().value;
    return pc ? pc.connectionState : "new";
  }

  async start() {
    const created = await this.request("", { janus: "create" });
    this.session = `/${created.data.id}`;
    this.keeper = setInterval(() => {
      this.request(this.session, { janus: "keepalive" }).catch(() => this.lose());
    }, KEEPALIVE_MS);
    this.poll();
    if (!this.feed) {
      this.resubscriber = setInterval(() => this.subscribeMissing(), RESUBSCRIBE_MS);
      return this.subscribeMissing();
    }
    this.publishing = await this.attach();
    const pc = this.publisher = new RTCPeerConnection(this.config);
    if (this.local) {
      for (const t of this.local.getTracks()) this.prepare(pc.addTrack(t, this.local));
    } else { // no camera: still in the room, to receive the other party
      pc.addTransceiver("audio", { direction: "recvonly" });
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    this.trickled(pc, this.publishing);
    pc.onconnectionstatechange = () => { if (pc === this.publisher) this.onState(pc.connectionState); };
    await this.message(this.publishing, { request: "join", ptype: "publisher",
      room: this.creds.room, pin: this.creds.pin, id: this.feed });
    await pc.setLocalDescription(await pc.createOffer());
    await this.message(this.publishing, { request: "publish" },
      { type: "offer", sdp: pc.localDescription.sdp });
  }

  /** Every peer connection's stats in one map (the screen's media and link checks). */
  async getStats() {
    const all = new Map();
    for (const pc of [this.publisher, ...this.subscribers.values()]) {
      if (pc) (await pc.getStats()).forEach((r, id) => all.set(id, r));
    }
    return all;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.keeper);
    clearInterval(this.resubscriber);
    for (const pc of [this.publisher, ...this.subscribers.values()]) {
      if (!pc) continue;
      pc.onicecandidate = pc.ontrack = pc.onconnectionstatechange = null;
      pc.close();
    }
    this.publisher = null;
    this.subscribers.clear();
    if (this.session) this.request(this.session, { janus: "destroy" }).catch(() => {});
  }

  // ---------- Janus's API ----------
  async request(path, body) {
    // A text body (no Content-Type of ours) is a simple cross-origin request: no preflight.
    const r = await fetch(this.server + path, { method: "POST", body: JSON.stringify({
      ...body, transaction: crypto.randomUUID(), token: this.creds.token }) });
    return checked(await r.json());
  }

  async attach() {
    return (await this.request(this.session, { janus: "attach", plugin: VIDEOROOM })).data.id;
  }

  message(handle, body, jsep) {
    const m = { janus: "message", body };
    if (jsep) m.jsep = jsep;
    return this.request(`${this.session}/${handle}`, m);
  }

  /** Our candidates to Janus as they come, for this handle; the last says it is complete. */
  trickled(pc, handle) {
    pc.onicecandidate = (ev) => {
      if (this.closed) return;
      const candidate = ev.candidate && ev.candidate.candidate ? ev.candidate.toJSON() : { completed: true };
      this.request(`${this.session}/${handle}`, { janus: "trickle", candidate }).catch(() => {});
    };
  }

  async poll() {
    while (!this.closed) {
      let events;
      try {
        const q = `maxev=10&token=${encodeURIComponent(this.creds.token)}&rid=${Date.now()}`;
        const r = await fetch(`${this.server}${this.session}?${q}`);
        events = [].concat(await r.json());
        for (const e of events) checked(e); // the session is gone: an error event
      } catch {
        this.lose();
        return;
      }
      for (const e of events) {
        if (this.closed) return;
        await this.onEvent(e).catch((err) => console.warn("janus:", err.message));
      }
    }
  }

  lose() {
    if (this.lost || this.closed) return;
    this.lost = true;
    this.onLost();
  }

  async onEvent(e) {
    const data = (e.plugindata && e.plugindata.data) || {};
    const ours = e.sender === this.publishing;
    if (e.janus === "hangup" && ours) return this.lose();
    if (e.janus !== "event" || data.error_code) return;
    if (ours) {
      if (e.jsep && this.publisher) await this.publisher.setRemoteDescription(e.jsep);
      for (const p of data.publishers || []) await this.subscribe(String(p.id));
      const gone = data.unpublished ?? data.leaving;
      if (gone !== undefined && this.subscribers.has(String(gone))) {
        this.subscribers.get(String(gone)).close();
        this.subscribers.delete(String(gone));
      }
    } else if (this.handles.has(e.sender)) {
      await this.onSubscriberEvent(e, data);
    }
  }

  async onSubscriberEvent(e, data) {
    const feed = this.handles.get(e.sender);
    const offer = e.janus === "event" && e.jsep && !data.error_code;
    const joining = this.pending.get(feed);
    if (offer && joining && joining.handle === e.sender) {
      this.pending.delete(feed);
      return this.answer(feed, e.sender, e.jsep);
    }
    const empty = data.videoroom === "attached" && !e.jsep; // the feed has no streams yet
    if (e.janus !== "hangup" && !data.error_code && !offer && !empty) return;
    // No such feed (yet), or none of its streams yet; or its stream ended: a hangup, or (Janus
    // 1.x) an offer on the same subscription taking the feed's streams away once its publisher
    // left (answered on a new connection it stalled half set up). A party subscribes again when
    // the feed is published again, a watcher every RESUBSCRIBE_MS.
    this.forget(e.sender);
  }

  /** A subscription is over: its handle detached (so a watcher that waits long for a party
   * leaves none behind on Janus), its peer connection closed. */
  forget(handle) {
    const feed = this.handles.get(handle);
    this.handles.delete(handle);
    this.request(`${this.session}/${handle}`, { janus: "detach" }).catch(() => {});
    const joining = this.pending.get(feed);
    if (joining && joining.handle === handle) this.pending.delete(feed);
    const pc = this.subscribers.get(feed);
    if (pc && pc.handle === handle) { pc.close(); this.subscribers.delete(feed); }
  }

  /** A watcher's subscriptions to the parties it does not receive and is not joining. */
  async subscribeMissing() {
    for (const feed of PARTIES) {
      if (this.closed || this.lost) return;
      const joining = this.pending.get(feed);
      // Janus offers nothing to a subscription of a feed whose media was not up when it
      // joined (seen after a move to another server): given up after PENDING_MS, joined anew.
      if (joining && Date.now() - joining.at > PENDING_MS) this.forget(joining.handle);
      if (this.subscribers.has(feed) || this.pending.has(feed)) continue;
      await this.subscribe(feed).catch(() => {});
    }
  }

  async subscribe(feed) {
    if (feed === this.feed || this.closed) return;
    const old = this.subscribers.get(feed);
    if (old) { old.close(); this.subscribers.delete(feed); } // it published again
    const handle = await this.attach();
    this.handles.set(handle, feed);
    this.pending.set(feed, { handle, at: Date.now() });
    await this.message(handle, { request: "join", ptype: "subscriber", room: this.creds.room,
      pin: this.creds.pin, streams: [{ feed }] });
  }

  async answer(feed, handle, offer) {
    const pc = new RTCPeerConnection(this.config);
    pc.handle = handle;
    this.subscribers.set(feed, pc);
    pc.ontrack = (ev) => { if (this.subscribers.get(feed) === pc) this.onTrack(ev.track, feed); };
    if (!this.feed) {
      pc.onconnectionstatechange = () => { if (!this.closed) this.onState(this.connectionState); };
    }
    this.trickled(pc, handle);
    await pc.setRemoteDescription(offer);
    await pc.setLocalDescription(await pc.createAnswer());
    await this.message(handle, { request: "start", room: this.creds.room },
      { type: "answer", sdp: pc.localDescription.sdp });
  }
}

function checked(reply) {
  if (reply && reply.janus === "error") throw new Error(`Janus: ${reply.error && reply.error.reason}`);
  return reply;
}

/** Two credentials name the same room on the same server. */
export function sameRoom(a, b) {
  return Boolean(a && b && a.server === b.server && a.room === b.room);
}
