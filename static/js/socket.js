// Kinwire's one socket client (docs/API.md, "WebSocket /ws"; docs/clients.md).
// An ES module, no build step. It opens /ws with the kinwire.v1.json subprotocol, or
// kinwire.v1.msgpack (binary frames, static/js/msgpack.js) when asked (the session
// cookie authenticates it, or a token given to the constructor), keeps it open with capped
// exponential backoff, resumes the user's event stream from the last seq it applied (sync
// {since} with paging; {reset} makes the page reload its data), drops duplicate seqs, shows its
// state on the page and answers request/reply by id with a timeout. A heartbeat finds a socket
// that died without a close (a phone in a tunnel, a router that forgot the connection): when
// nothing has arrived for heartbeatIdleMs it sends `ping`, and a socket that then stays silent for
// heartbeatDeadlineMs is dropped and reconnected (docs/clients.md: within 5 s by default).
// A connection attempt not open within connectTimeoutMs is given up and made again (a SYN sent
// into a dead network is retried by the kernel ever more slowly). While a page sets `urgent`
// (a video visit in progress) the backoff between attempts is at most urgentBackoffMs, so the
// call is back within seconds of the network (issue 21), not at the next 15 s retry.

import { decode as unpack, encode as pack } from "./msgpack.js";
import { t } from "./i18n.js";

const CODECS = new Set(["json", "msgpack"]);
const NO_CURSOR = Number.MAX_SAFE_INTEGER; // beyond any head: the server answers {reset, seq}
// The close codes the server sends (server/gateway/client.py, docs/API.md "Close codes"), named
// once; ABANDONED is this page's own, for a socket it gave up on. tests/integration/test_constants_have_one_source.py
// keeps this table equal to the server's.
const CLOSE = Object.freeze({
  NORMAL: 1000, UNAUTHORISED: 4001, TOO_SLOW: 4008, REVOKED: 4009, TOO_MANY_CONNECTIONS: 4029,
  ABANDONED: 4000,
});
const NO_RECONNECT = new Set([CLOSE.UNAUTHORISED, CLOSE.REVOKED]); // sign in again
const RETRY_LATER = new Set([CLOSE.TOO_SLOW, CLOSE.TOO_MANY_CONNECTIONS]); // back off first

// Idle time before a ping while a call is on (`urgent`): 1.5 s + the 2 s deadline + a tick
// finds a dead link in under 4 s (it was 4.7 s with the 2.5 s default, against the 5 s rule).
const URGENT_IDLE_MS = 1500;

export class SocketError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

/** The codec a page asked for: `?codec=msgpack` in its URL, else localStorage
 * `kinwire.codec`, else JSON. */
export function chosenCodec() {
  let asked = new URLSearchParams(location.search).get("codec");
  try {
    asked = asked || localStorage.getItem("kinwire.codec");
  } catch { /* storage may be off */ }
  return CODECS.has(asked) ? asked : "json";
}

export class KinwireSocket {
  /**
   * @param {object} o
   * @param {(type: string, data: object, seq?: number) => void} o.onEvent every push, in order
   * @param {() => Promise<void>} o.onReset reload everything from HTTP (first connect, or the
   *   stream was pruned past our cursor)
   * @param {(state: string) => void} [o.onState] connecting | online | offline | closed
   * @param {() => void} [o.onUnauthorised] the server closed 4001/4009: log in again
   * @param {string} [o.token] a bearer token to send as `auth` (kiosks may use the cookie too)
   * @param {string} [o.codec] "json" or "msgpack"; by default chosenCodec()
   */
  constructor({ onEvent, onReset, onState, onUnauthorised, token, url, codec, timeoutMs = 10000,
                backoffMinMs = 250, backoffMaxMs = 15000, heartbeatIdleMs = 2500,
                heartbeatDeadlineMs = 2000, connectTimeoutMs = 3000, urgentBackoffMs = 1000 }) {
    this.codec = CODECS.has(codec) ? codec : chosenCodec();
    this.onEvent = onEvent;
    this.onReset = onReset;
    this.onState = onState || (() => {});
    this.onUnauthorised = onUnauthorised || (() => {});
    this.token = token || null;
    this.url = url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    this.timeoutMs = timeoutMs;
    this.backoffMinMs = backoffMinMs;
    this.backoffMaxMs = backoffMaxMs;
    this.connectTimeoutMs = connectTimeoutMs;
    this.urgentBackoffMs = urgentBackoffMs;
    this.urgent = false; // a visit is in progress: retry often (see above)
    this.lastSeq = null; // the highest seq applied; null until the first sync
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.buffer = []; // pushes with seq that arrive while a sync runs
    this.syncing = false;
    this.attempt = 0;
    this.ws = null;
    this.stopped = false;
    this.state = "offline";
    this.retryTimer = null;
    this.heartbeatIdleMs = heartbeatIdleMs;
    this.heartbeatDeadlineMs = heartbeatDeadlineMs;
    this.lastFrameAt = 0; // performance.now() of the last frame received on this.ws
    this.pingAt = null; // when the unanswered heartbeat ping went out
    this.watchTimer = null;
    // The network is back (laptop woke, phone left a tunnel): retry now, not at the backoff.
    this._online = () => { if (!this.ws && !this.stopped) this.reconnectNow(); };
    window.addEventListener("online", this._online);
  }

  /** Skip the rest of the backoff wait (the network came back, or the page asks). */
  reconnectNow() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.retryTimer);
    this._connect();
  }

  start() {
    this.stopped = false;
    this._connect();
    return this;
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.watchTimer);
    window.removeEventListener("online", this._online);
    if (this.ws) this.ws.close(CLOSE.NORMAL, "bye");
    this._setState("closed");
  }

  _setState(state) {
    if (state === this.state) return;
    this.state = state;
    document.documentElement.dataset.socket = state;
    document.documentElement.dataset.socketCodec = this.codec;
    for (const el of document.querySelectorAll("[data-socket-state]")) {
      el.dataset.socketState = state;
      el.textContent = t(`socket.${state}`);
    }
    this.onState(state);
  }

  _connect() {
    if (this.stopped) return;
    this._setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url, `kinwire.v1.${this.codec}`);
      ws.binaryType = "arraybuffer";
    } catch (err) {
      this._scheduleRetry();
      return;
    }
    this.ws = ws;
    this._watch(ws);
    ws.onopen = () => this._opened(ws);
    ws.onmessage = (ev) => this._frame(ws, ev.data);
    ws.onclose = (ev) => this._closed(ws, ev.code);
    ws.onerror = () => {}; // onclose follows and decides
  }

  async _opened(ws) {
    try {
      if (this.token) await this.request("auth", { token: this.token });
      await this._resync();
      if (ws !== this.ws) return;
      this.attempt = 0;
      this._setState("online");
    } catch (err) {
      // A failed sync on a live socket: drop it and let reconnection start over.
      if (ws === this.ws) this._abandon(ws, "resync failed");
    }
  }

  /** Watch `ws` until it is replaced: not open and synced within timeoutMs, or silent past the
   * heartbeat's deadline, it is abandoned. One interval a socket; pings only when idle. */
  _watch(ws) {
    clearInterval(this.watchTimer);
    const openedBy = performance.now() + this.timeoutMs;
    const connectedBy = performance.now() + this.connectTimeoutMs;
    this.lastFrameAt = performance.now();
    this.pingAt = null;
    const tick = Math.max(100, Math.min(URGENT_IDLE_MS, this.heartbeatIdleMs, this.heartbeatDeadlineMs) / 8);
    this.watchTimer = setInterval(() => {
      if (ws !== this.ws) return;
      const now = performance.now();
      if (this.state !== "online") {
        if (now > openedBy) this._abandon(ws, "open timed out");
        else if (ws.readyState === WebSocket.CONNECTING && now > connectedBy) this._abandon(ws, "connect timed out");
        return;
      }
      const answered = this.pingAt === null || this.lastFrameAt >= this.pingAt;
      if (!answered) {
        if (now - this.pingAt >= this.heartbeatDeadlineMs) this._abandon(ws, "heartbeat missed");
        return;
      }
      // In a call (urgent) it pings sooner, so a dead link is found in under 4 s there.
      const idleMs = this.urgent ? Math.min(this.heartbeatIdleMs, URGENT_IDLE_MS) : this.heartbeatIdleMs;
      if (now - this.lastFrameAt >= idleMs) {
        this.pingAt = now;
        this.request("ping", {}, this.heartbeatDeadlineMs + this.timeoutMs).catch(() => {});
      }
    }, tick);
  }

  /** Give up on `ws` now: a dead connection may never finish a closing handshake, so its
   * close event is not awaited; the page goes offline and reconnection starts at once. */
  _abandon(ws, why) {
    if (ws !== this.ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(CLOSE.ABANDONED, why);
    } catch { /* already closing */ }
    this._closed(ws, CLOSE.ABANDONED);
  }

  _closed(ws, code) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearInterval(this.watchTimer);
    this.syncing = false;
    this.buffer = [];
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new SocketError("disconnected", "The connection was lost."));
      this.pending.delete(id);
    }
    if (this.stopped) return;
    if (NO_RECONNECT.has(code)) {
      this.stopped = true;
      this._setState("closed");
      this.onUnauthorised(code);
      return;
    }
    this._setState("offline");
    this._scheduleRetry(RETRY_LATER.has(code) ? 5 : 0);
  }

  _scheduleRetry(extraSteps = 0) {
    const step = Math.min(this.attempt + extraSteps, 16);
    const most = this.urgent ? Math.min(this.urgentBackoffMs, this.backoffMaxMs) : this.backoffMaxMs;
    const cap = Math.min(most, this.backoffMinMs * 2 ** step);
    const delay = cap / 2 + Math.random() * (cap / 2); // "equal jitter"
    this.attempt += 1;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }

  _frame(ws, data) {
    if (ws !== this.ws) return;
    this.lastFrameAt = performance.now();
    let frame;
    try {
      frame = typeof data === "string" ? JSON.parse(data) : unpack(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    if (frame.id !== undefined && frame.id !== null && !frame.type) {
      const p = this.pending.get(frame.id);
      if (!p) return;
      this.pending.delete(frame.id);
      clearTimeout(p.timer);
      if (frame.error) p.reject(new SocketError(frame.error.code, frame.error.message));
      else p.resolve(frame.ok);
      return;
    }
    if (typeof frame.type !== "string") return;
    if (frame.seq === undefined || frame.seq === null) {
      this._emit(frame.type, frame.data); // live-only: typing, signalling, meter ticks
      return;
    }
    if (this.syncing || this.lastSeq === null) {
      this.buffer.push(frame);
      return;
    }
    this._apply(frame);
  }

  _apply(frame) {
    if (frame.seq <= this.lastSeq) return; // a duplicate: already applied
    if (frame.seq > this.lastSeq + 1) {
      // A gap (should not happen on one socket): fetch what is missing, in order.
      this.buffer.push(frame);
      this._resync().catch(() => this.ws && this._abandon(this.ws, "resync failed"));
      return;
    }
    this.lastSeq = frame.seq;
    this._emit(frame.type, frame.data, frame.seq);
  }

  _emit(type, data, seq) {
    try {
      this.onEvent(type, data || {}, seq);
    } catch (err) {
      console.error("kinwire: event handler failed", type, err);
    }
  }

  async _resync() {
    if (this.syncing) return;
    this.syncing = true;
    try {
      for (;;) {
        const since = this.lastSeq === null ? NO_CURSOR : this.lastSeq;
        const r = await this.request("sync", { since });
        if (r.reset) {
          this.lastSeq = r.seq;
          await this.onReset();
          break;
        }
        for (const e of r.events) {
          if (e.seq > this.lastSeq) {
            this.lastSeq = e.seq;
            this._emit(e.type, e.data, e.seq);
          }
        }
        if (!r.more) break;
      }
    } finally {
      this.syncing = false;
    }
    const held = this.buffer.sort((a, b) => a.seq - b.seq);
    this.buffer = [];
    for (const frame of held) this._apply(frame);
  }

  /** Send a command; resolves with `ok`, rejects with SocketError(code). */
  request(op, args = {}, timeoutMs = this.timeoutMs) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new SocketError("disconnected", "Not connected."));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SocketError("timeout", `No answer to ${op} in time.`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      const command = { id, op, args };
      ws.send(this.codec === "msgpack" ? pack(command) : JSON.stringify(command));
    });
  }
}
