// The kiosk app (docs/clients.md): a registered device (kiosk_device.js), sign-in by inmate
// number and PIN, then its cards, one module each: connection requests (kiosk/requests.js),
// video visits (visit_list.js KioskVisits) and the inbox with photos and replies, collect when
// the balance is short (kiosk/messages.js). This page wires them: it loads what they share,
// keeps the balance and the connections in a Store (store.js) and hands the socket's pushes on.
import { api } from "./api.js";
import { forgetLanguage, languageSwitch, loadLanguage, t } from "./i18n.js";
import { $, say } from "./dom.js";
import { upsertConnection, facilityPrices } from "./connections.js";
import { device, showSetUp, showSignIn } from "./kiosk_device.js";
import { KinwireSocket } from "./socket.js";
import { Store } from "./store.js";
import { Inbox, loadConversations } from "./threads.js";
import { KioskVisits } from "./visit_list.js";
import { rememberZones, setHomeZone } from "./time.js";
import { IdleSignOut } from "./idle.js";
import { KioskMessages } from "./kiosk/messages.js";
import { Requests } from "./kiosk/requests.js";

// Every word in the reader's language (i18n.js): the device's browser language, or what the
// person chose with the switch in the header until they sign out.
await loadLanguage();
$("lang-slot").append(languageSwitch());

const store = new Store({ balance: 0, connections: new Map() });
let cards = null; // built once signed in: {inbox, requests, visits, messages}
let socket = null;

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
      showSetUp(t("device.unknown"));
    } else {
      say($("login-notice"), err.message, "error");
    }
  }
});

async function signOut() {
  try { await api("POST", "/auth/logout"); } catch { /* signed out either way */ }
  forgetLanguage(); // a shared kiosk: the next person starts in the device's language
  if (socket) socket.stop();
  location.reload();
}
$("logout").addEventListener("click", signOut);

store.watch("balance", (n) => {
  $("balance").textContent = t("credits.n", { n });
  $("balance").dataset.balance = String(n);
});

// ---------- signed in ----------
/** The prices of the person's facility (its own, else the server's defaults); its zone is
 * the one every time on the kiosk is shown in. */
async function loadPrices(facilityId) {
  const pricing = await api("GET", "/pricing");
  try {
    const f = await api("GET", `/facilities/${encodeURIComponent(facilityId)}`);
    rememberZones([f.facility]);
    setHomeZone(f.facility.timezone);
    return facilityPrices(pricing, f.facility);
  } catch {
    return facilityPrices(pricing, null); // times in the device's own zone
  }
}

function build(me, prices) {
  const inbox = new Inbox(me.id);
  socket = new KinwireSocket({ onEvent, onReset: reloadAll, onUnauthorised: () => location.reload() });
  return {
    inbox,
    requests: new Requests({ store }),
    visits: new KioskVisits({ store, socket, list: $("kiosk-visits"), screen: $("visit-screen"), app: $("app") }),
    messages: new KioskMessages({ me, inbox, store, socket, prices }),
  };
}

async function reloadAll() {
  const r = await loadConversations(cards.inbox);
  store.set("connections", r.connections);
  store.set("balance", r.balance);
  await cards.visits.load().catch(() => {});
}

function onEvent(type, data) {
  // The store first, so that every card reads the new value when it hears of it.
  if (type === "balance") store.set("balance", data.balance);
  else if (type === "connection.updated") upsertConnection(store, data);
  cards.visits.onEvent(type, data);
  cards.messages.onEvent(type, data);
}

async function start() {
  const me = await api("GET", "/me");
  if (me.account.role !== "person") throw new Error("not a kiosk session");
  $("me-name").textContent = me.account.name;
  const prices = await loadPrices(me.account.facility_id);
  $("auth").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  cards = cards || build(me.account, prices);
  await reloadAll();
  socket.start();
  // For tests and the curious: what a test may read, nothing more.
  const { messages } = cards;
  window.kinwire = { me: me.account, socket, get current() { return messages.current; } };
  if (me.kiosk) { // a shared kiosk signs its person out when left alone (idle.js)
    new IdleSignOut(me.kiosk.idle_sign_out_s, $("idle"),
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
