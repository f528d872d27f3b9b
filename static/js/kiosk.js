// The kiosk app (docs/clients.md): a registered device (kiosk_device.js), sign-in by inmate
// number and PIN, connection requests (who asks, what they say they are, when) to approve or
// deny, and the inbox with photos and replies (collect when the balance is short).
import { api, newKey } from "./api.js";
import { $, h, say } from "./dom.js";
import { device, showSetUp, showSignIn } from "./kiosk_device.js";
import { toPerson } from "./relationships.js";
import { KinwireSocket } from "./socket.js";
import { Inbox, Typing, bubble, loadConversations, when } from "./threads.js";
import { KioskVisits } from "./visit_list.js";
import { rememberZones, setHomeZone } from "./time.js";
import { IdleSignOut } from "./idle.js";

// prices: the facility's, else the server's defaults (GET /pricing), read at sign-in
const state = { me: null, balance: 0, prices: null, connections: new Map(), inbox: null,
                current: null, socket: null };

// ---------- sign-in ----------
$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const d = device();
  if (!d.facility || !d.token) {
    showSignIn(); // the set-up panel, alone
    return;
  }
  try {
    await api("POST", "/auth/kiosk", {
      headers: { "X-Device-Token": d.token },
      body: { facility_id: d.facility, inmate_number: $("login-number").value.trim(), pin: $("login-pin").value } });
    $("login-pin").value = "";
    await start();
  } catch (err) {
    if (err.code === "unknown_device") {
      showSetUp("This kiosk is not registered for that facility: staff must set it up again.");
    } else {
      say($("login-notice"), err.message, "error");
    }
  }
});

async function signOut() {
  try { await api("POST", "/auth/logout"); } catch { /* signed out either way */ }
  if (state.socket) state.socket.stop();
  location.reload();
}
$("logout").addEventListener("click", signOut);

// ---------- requests ----------
function renderRequests() {
  const pending = [...state.connections.values()].filter((c) => c.status === "requested")
    .sort((a, b) => (a.requested_at < b.requested_at ? -1 : 1)); // oldest first
  const list = $("requests");
  list.replaceChildren(...pending.map((c) => {
    const name = c.family_name || "Someone";
    const says = toPerson(c.relationship);
    const asked = c.requested_at || c.updated_at;
    const approve = h("button", { type: "button", class: "primary", "aria-label": `Approve ${name}` }, "Approve");
    const deny = h("button", { type: "button", class: "danger", "aria-label": `Deny ${name}` }, "Deny");
    approve.addEventListener("click", () => decide(c, "approve", approve, deny));
    deny.addEventListener("click", () => decide(c, "deny", approve, deny));
    return h("li", { class: "request", dataset: { connection: c.id } },
      h("div", { class: "who-asks" },
        h("p", {}, h("strong", {}, name), " wants to connect"),
        h("p", { class: "muted" },
          says ? h("span", { class: "relationship" }, `Says they are ${says}. `)
               : h("span", { class: "relationship" }, "Did not say how they know you. "),
          "Asked ", h("time", { datetime: asked }, when(asked)), ".")),
      h("span", { class: "row" }, approve, deny));
  }));
  if (!pending.length) list.append(h("li", { class: "muted" }, "No requests."));
}

async function decide(c, action, ...buttons) {
  for (const b of buttons) b.disabled = true;
  try {
    const r = await api("POST", `/connections/${encodeURIComponent(c.id)}/${action}`);
    upsertConnection(r.connection || { ...c, status: action === "approve" ? "approved" : "denied" });
  } catch (err) {
    for (const b of buttons) b.disabled = false;
    alert(err.message);
  }
}

function upsertConnection(c) {
  const old = state.connections.get(c.id) || {};
  state.connections.set(c.id, { ...old, ...c, family_name: c.family_name || old.family_name });
  renderRequests();
  renderThreads();
  renderThread();
}

// ---------- inbox ----------
function approvedContacts() {
  return [...state.connections.values()].filter((c) => c.status === "approved");
}

function contactOf(familyId) {
  return [...state.connections.values()].find((c) => c.family_id === familyId);
}

function renderThreads() {
  const contacts = approvedContacts();
  $("no-threads").hidden = contacts.length > 0;
  $("threads").replaceChildren(...contacts.map((c) => {
    const unread = state.inbox.unread(c.family_id);
    const btn = h("button", { type: "button", "aria-current": String(state.current === c.family_id),
                              dataset: { family: c.family_id } },
      h("strong", {}, c.family_name || "Contact"),
      unread ? h("span", { class: "count", "aria-label": `${unread} unread` }, unread) : null);
    btn.addEventListener("click", () => { state.current = c.family_id; renderThreads(); renderThread(); $("compose-body").focus(); });
    return h("li", {}, btn);
  }));
}

async function payToOpen(msg) {
  try {
    const r = await api("POST", `/messages/${encodeURIComponent(msg.id)}/open`);
    state.inbox.upsert(r.message);
    renderThread();
  } catch (err) {
    say($("compose-notice"), err.message, "error");
  }
}

const opening = new Set();
function markRead(msgs) {
  for (const m of msgs) {
    if (m.from === state.me.id || m.opened_at || m.locked || m.status !== "delivered" || opening.has(m.id)) continue;
    opening.add(m.id);
    api("POST", `/messages/${encodeURIComponent(m.id)}/open`)
      .then((r) => { state.inbox.upsert(r.message); })
      .catch(() => {})
      .finally(() => opening.delete(m.id));
  }
}

function renderThread() {
  const id = state.current;
  $("thread").hidden = !id;
  if (!id) return;
  const c = contactOf(id);
  $("thread-h").textContent = c ? (c.family_name || "Contact") : "";
  const msgs = state.inbox.thread(id);
  const fromName = c ? c.family_name : null;
  $("messages").replaceChildren(...msgs.map((m) => bubble(m, state.me.id, { onOpen: payToOpen, fromName })));
  if (!msgs.length) $("messages").append(h("li", { class: "muted" }, "No messages yet."));
  $("messages").scrollTop = $("messages").scrollHeight;
  typing.render();
  markRead(msgs);
  renderCompose();
}

function renderCompose() {
  if (!state.current) return;
  const price = state.prices.message;
  const short = state.balance < price;
  $("send").textContent = `Send (${price} credits)`;
  $("send").disabled = short;
  $("send-cod").hidden = !short;
  $("compose-price").textContent = short
    ? `You have ${state.balance} credits; a message costs ${price}. Send it collect: they pay ${price} credits to open it.`
    : `Sending costs ${price} credits (balance after: ${state.balance - price}).`;
}

let sendKey = null;
async function send(cod) {
  const body = $("compose-body").value;
  if (!body.trim() || !state.current) return;
  $("send").disabled = $("send-cod").disabled = true;
  sendKey = sendKey || newKey();
  try {
    const r = await api("POST", "/messages", { key: sendKey, body: { to: state.current, body, cod } });
    sendKey = null;
    state.inbox.upsert(r.message);
    $("compose-body").value = "";
    say($("compose-notice"), cod ? "Sent collect." : "");
    renderThread();
  } catch (err) {
    if (err.status && err.status < 500) sendKey = null;
    say($("compose-notice"), err.message, "error");
  } finally {
    $("send-cod").disabled = false;
    renderCompose();
  }
}
$("compose").addEventListener("submit", (ev) => { ev.preventDefault(); send(false); });
$("send-cod").addEventListener("click", () => send(true));
$("compose-body").addEventListener("input", () => {
  sendKey = null;
  if ($("compose-body").value) typing.send(state.current);
});
// Typing indicators both ways (threads.js Typing).
const typing = new Typing($("typing"), { socket: () => state.socket, current: () => state.current,
                                          nameOf: (id) => (contactOf(id) || {}).family_name || "Your contact" });

// ---------- data and live events ----------
function setBalance(n) {
  state.balance = n;
  $("balance").textContent = `${n} credits`;
  $("balance").dataset.balance = String(n);
  renderCompose();
}

async function reloadAll() {
  const r = await loadConversations(state.inbox);
  state.connections = r.connections;
  setBalance(r.balance);
  renderRequests();
  renderThreads();
  renderThread();
  await state.visitsUi?.load().catch(() => {}); // video visits (visit_list.js)
}

function onEvent(type, data) {
  if (type === "typing") return typing.heard(data.from);
  if (type === "message.new") typing.done(data.from);
  state.visitsUi?.onEvent(type, data); // video visits (visit_list.js)
  if (type === "balance") setBalance(data.balance);
  else if (type === "connection.updated") upsertConnection(data);
  else if (type === "message.new" || type === "message.status") {
    state.inbox.upsert(data);
    renderThreads();
    if (state.current === state.inbox.other(data)) renderThread();
  }
}

async function start() {
  const me = await api("GET", "/me");
  if (me.account.role !== "person") throw new Error("not a kiosk session");
  state.me = me.account;
  state.inbox = new Inbox(me.account.id);
  $("me-name").textContent = me.account.name;
  state.prices = (await api("GET", "/pricing")).prices;
  try {
    const f = await api("GET", `/facilities/${encodeURIComponent(me.account.facility_id)}`);
    state.prices = { ...state.prices, ...((f.facility.settings && f.facility.settings.prices) || {}) };
    rememberZones([f.facility]);
    setHomeZone(f.facility.timezone); // every time on the kiosk is the facility's
  } catch { /* GET /pricing's defaults; times in the device's own zone */ }
  $("auth").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  state.visitsUi = new KioskVisits(state, { list: $("kiosk-visits"), screen: $("visit-screen"), app: $("app") });
  await reloadAll();
  state.socket = new KinwireSocket({ onEvent, onReset: reloadAll, onUnauthorised: () => location.reload() }).start();
  window.kinwire = state;
  if (me.kiosk) { // a shared kiosk signs its person out when left alone (idle.js)
    state.idle = new IdleSignOut(me.kiosk.idle_sign_out_s, $("idle"),
                                 { onExpire: signOut, busy: () => !$("visit-screen").hidden }).start();
  }
  document.body.dataset.ready = "signed-in";
}

(async () => {
  showSignIn();
  try {
    await start();
  } catch {
    $("auth").hidden = false;
    document.body.dataset.ready = "signed-out";
  }
})();
