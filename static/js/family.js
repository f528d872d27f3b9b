// The family web app (docs/clients.md): sign up and log in, then its tabs, one module each
// (static/js/family/): Messages, Find a person, Visits (booking.js), Buy credits, Give credits,
// Statement. This page wires them: it loads what they share, keeps the balance and the
// contacts in a Store (store.js) that each screen watches, and hands the socket's pushes on.
import { api } from "./api.js";
import { $, say } from "./dom.js";
import { bindEmailLogin } from "./login.js";
import { KinwireSocket } from "./socket.js";
import { Store } from "./store.js";
import { Inbox, loadConversations } from "./threads.js";
import { FamilyVisits } from "./booking.js";
import { rememberZones, setHomeZone, zoneOf } from "./time.js";
import { upsertConnection } from "./connections.js";
import { BuyCredits, checkoutMessage } from "./family/credits.js";
import { FindPerson } from "./family/find.js";
import { Gift } from "./family/gift.js";
import { Messages } from "./family/messages.js";
import { Statement } from "./family/statement.js";
import { Tabs } from "./family/tabs.js";
import { has, language, languageSwitch, loadLanguage, t } from "./i18n.js";

// Every word on the page in the reader's language (i18n.js) before anything is drawn; the
// switch in the header, on every screen, signed in or not.
await loadLanguage();
$("lang-slot").append(languageSwitch());

// The values more than one screen shows: the balance (header, compose box, gift, visits) and
// the contacts (GET /connections: find, threads, gift, visits).
const store = new Store({ balance: 0, connections: new Map() });
let screens = null; // built once signed in: {messages, find, visits, credits, gift, statement}
let socket = null;

// ---------- signed out ----------
bindEmailLogin(() => start());

$("signup-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  say($("signup-notice"), "");
  const email = $("signup-email").value.trim();
  const password = $("signup-password").value;
  try {
    await api("POST", "/auth/signup", { body: { email, password, name: $("signup-name").value.trim() } });
    await api("POST", "/auth/login", { body: { email, password } });
    await start();
  } catch (err) {
    const fields = err.details && err.details.fields
      ? ` (${Object.keys(err.details.fields).map((f) => (has(`field.${f}`) ? t(`field.${f}`) : f)).join(", ")})` : "";
    say($("signup-notice"), err.message + fields, "error");
  }
});

$("logout").addEventListener("click", async () => {
  try { await api("POST", "/auth/logout"); } catch { /* signed out either way */ }
  if (socket) socket.stop();
  location.reload();
});

// ---------- the header, the tabs ----------
store.watch("balance", (n) => {
  $("balance").textContent = t("credits.n", { n });
  $("balance").dataset.balance = String(n);
});
// Times not tied to one contact (the statement) are in the family's contacts' facility zone.
store.watch("connections", (connections) => {
  const first = [...connections.values()][0];
  setHomeZone(first ? zoneOf(first.facility_id) : null);
});

const tabs = new Tabs(document.querySelector("nav.tabs"), (name) => screens?.[name]?.shown?.());

// ---------- signed in ----------
async function loadFacilities() {
  const r = await api("GET", "/facilities");
  rememberZones(r.facilities);
  return new Map(r.facilities.map((f) => [f.id, f]));
}

function build(me, facilities, pricing) {
  const inbox = new Inbox(me.id);
  socket = new KinwireSocket({ onEvent, onReset: reloadAll, onUnauthorised: () => location.reload() });
  const shared = { store, pricing };
  return {
    messages: new Messages({ ...shared, me, inbox, socket, facilities }),
    find: new FindPerson({ store, facilities }),
    visits: new FamilyVisits({ store, socket }),
    credits: new BuyCredits({ ...shared, facilities }),
    gift: new Gift(shared),
    statement: new Statement(),
    inbox,
  };
}

async function reloadAll() {
  const r = await loadConversations(screens.inbox);
  store.set("connections", r.connections);
  store.set("balance", r.balance);
  screens.messages.reloaded(r.historyComplete);
  await screens.visits.load().catch(() => {});
}

function onEvent(type, data) {
  // The store first, so that every screen reads the new value when it hears of it.
  if (type === "balance") store.set("balance", data.balance);
  else if (type === "connection.updated") upsertConnection(store, data);
  screens.visits.onEvent(type, data);
  screens.messages.onEvent(type, data);
  if (type === "balance" && tabs.current === "statement") screens.statement.load(true);
}

async function start() {
  const me = await api("GET", "/me");
  if (me.account.role !== "family") {
    location.href = "/static/kiosk.html";
    return;
  }
  store.set("balance", me.balance);
  $("me-name").textContent = me.account.name;
  $("auth").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  tabs.show("messages");
  const [facilities, pricing] = await Promise.all([loadFacilities(), api("GET", "/pricing")]);
  screens = screens || build(me.account, facilities, pricing);
  await reloadAll();
  socket.start();
  await checkoutReturn();
  // For tests and the curious: what a test may read or set, nothing more.
  const { messages, statement } = screens;
  window.kinwire = {
    me: me.account, socket, inbox: screens.inbox,
    get current() { return messages.current; },
    get historyComplete() { return messages.historyComplete; },
    set historyComplete(v) { messages.historyComplete = v; },
    set statementPage(n) { statement.pageSize = n; },
  };
  document.body.dataset.ready = "signed-in";
  await emailLanguage(me.account.id);
}

/** The family's emails in the language its app runs in (PUT /notifications {language}): told
 * once per account and language, remembered here, so a page load costs no request. */
async function emailLanguage(accountId) {
  const told = `${accountId}:${language()}`;
  try {
    if (localStorage.getItem("kinwire.emailLanguage") === told) return;
    await api("PUT", "/notifications", { body: { language: language() } });
    localStorage.setItem("kinwire.emailLanguage", told);
  } catch { /* told at the next start */ }
}

/** Back from the payment processor's page (docs/payments.md, "Hosted checkout"): its confirmation
 * is in the fragment, out of the address bar at once; a payment window (a purchase during a
 * call) sends it as a message instead. */
async function checkoutReturn() {
  const back = new URLSearchParams(location.hash.slice(1));
  addEventListener("message", (ev) => {
    const paid = checkoutMessage(ev);
    if (paid) screens.credits.confirm(paid.checkout, paid.confirmation);
  });
  if (!back.get("checkout") || !back.get("confirmation")) return;
  history.replaceState(null, "", location.pathname + location.search);
  tabs.show("credits");
  await screens.credits.confirm(back.get("checkout"), back.get("confirmation"));
}

(async () => {
  try {
    await start();
  } catch (err) {
    $("auth").hidden = false;
    document.body.dataset.ready = "signed-out";
  }
})();
