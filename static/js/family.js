// The family web app (docs/clients.md): sign up and log in, buy credits, find a person and ask
// to connect, a chat-style inbox kept live by the shared socket (with typing indicators),
// giving credits to a contact and the statement.
import { api, ApiError, newKey, upload } from "./api.js";
import { $, dollars, h, say } from "./dom.js";
import { bindEmailLogin } from "./login.js";
import { KinwireSocket } from "./socket.js";
import { Inbox, Typing, applyEvent, bubble, loadConversations } from "./threads.js";
import { FamilyVisits } from "./booking.js";
import { RELATIONSHIPS } from "./relationships.js";
import { Statement } from "./family/statement.js";
import { Tabs } from "./family/tabs.js";
import { rememberZones, setHomeZone, zoneOf } from "./time.js";

// The server's purchase terms (block, fee) and a facility's default prices come from
// GET /pricing at sign-in; the receipt after paying shows what the server actually charged.

const state = {
  me: null, balance: 0, facilities: new Map(), connections: new Map(), inbox: null,
  current: null, socket: null, pricing: null,
};

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
    const fields = err.details && err.details.fields ? ` (${Object.keys(err.details.fields).join(", ")})` : "";
    say($("signup-notice"), err.message + fields, "error");
  }
});

$("logout").addEventListener("click", async () => {
  try { await api("POST", "/auth/logout"); } catch { /* signed out either way */ }
  if (state.socket) state.socket.stop();
  location.reload();
});

// ---------- tabs ----------
const statement = new Statement();
const tabs = new Tabs(document.querySelector("nav.tabs"), (name) => {
  if (name === "statement") statement.shown();
  if (name === "gift") renderGift();
});
const showTab = (name) => tabs.show(name);

// ---------- balance ----------
function setBalance(n) {
  state.balance = n;
  $("balance").textContent = `${n} credits`;
  $("balance").dataset.balance = String(n);
  renderCompose();
  renderGift();
  state.visitsUi?.setBalance(n); // video visits (booking.js)
}

// ---------- credits ----------
function renderQuote() {
  const p = state.pricing;
  if (!p) return;
  const credits = Number($("buy-credits").value);
  const price = credits * p.cents_per_credit;
  const fee = p.purchase_fee_cents;
  const total = price + fee;
  $("buy-price").textContent = dollars(price);
  $("buy-fee").textContent = fee ? dollars(fee) : "none";
  $("buy-total").textContent = dollars(total);
  $("buy-summary").textContent = fee
    ? `${credits} credits: ${dollars(price)} + ${dollars(fee)} fee = ${dollars(total)} total`
    : `${credits} credits: ${dollars(total)} total, no fee`;
  $("pay").textContent = `Pay ${dollars(total)}`;
}

/** The server's purchase terms (GET /pricing): the amounts offered and the fee shown. */
async function loadPricing() {
  const p = await api("GET", "/pricing");
  state.pricing = p;
  const amounts = [1, 2, 4, 10].map((n) => n * p.credit_block).filter((c) => c <= p.purchase_credits_max);
  $("buy-credits").replaceChildren(...amounts.map((c) => h("option", { value: c }, `${c} credits`)));
  $("buy-block").textContent = String(p.credit_block);
  renderQuote();
}
$("buy-credits").addEventListener("change", renderQuote);

let buyKey = null; // kept across retries of one purchase, so a retry never charges twice
$("buy-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const pay = $("pay");
  pay.disabled = true;
  say($("buy-notice"), "Paying…");
  buyKey = buyKey || newKey();
  try {
    const r = await api("POST", "/purchases", { key: buyKey, body: {
      credits: Number($("buy-credits").value),
      card: { number: $("card-number").value.replace(/\s+/g, ""), exp_month: Number($("card-month").value),
              exp_year: Number($("card-year").value), cvc: $("card-cvc").value, name: $("card-name").value } } });
    buyKey = null;
    const p = r.purchase;
    setBalance(r.balance);
    say($("buy-notice"), `Paid ${dollars(p.total_cents)} (${dollars(p.price_cents)} + ${dollars(p.fee_cents)} fee) with ${p.card_brand} ending ${p.card_last4}. ${p.credits} credits added.`, "ok");
    $("card-number").value = "";
    $("card-cvc").value = "";
  } catch (err) {
    if (err instanceof ApiError && err.status && err.status < 500) buyKey = null; // a final answer
    say($("buy-notice"), err.message, "error");
  } finally {
    pay.disabled = false;
  }
});

// ---------- find a person ----------
async function loadFacilities() {
  const r = await api("GET", "/facilities");
  state.facilities = new Map(r.facilities.map((f) => [f.id, f]));
  rememberZones(r.facilities);
  const sel = $("find-facility");
  sel.replaceChildren(...r.facilities.map((f) => h("option", { value: f.id }, f.name)));
}

$("find-relationship").append(...RELATIONSHIPS.map(([code, label]) => h("option", { value: code }, label)));
$("find-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  say($("find-notice"), "");
  const list = $("find-results");
  list.replaceChildren();
  try {
    const fid = $("find-facility").value;
    const r = await api("GET", `/facilities/${encodeURIComponent(fid)}/people?q=${encodeURIComponent($("find-q").value.trim())}`);
    if (!r.people.length) say($("find-notice"), "Nobody found. Check the spelling or try the inmate number.");
    for (const p of r.people) {
      const existing = [...state.connections.values()].find((c) => c.person_id === p.id);
      const btn = h("button", { type: "button", class: "primary", disabled: Boolean(existing) },
                    existing ? statusText(existing) : "Request connection");
      btn.setAttribute("aria-label", existing ? `${p.name}: ${statusText(existing)}` : `Request connection with ${p.name}`);
      btn.addEventListener("click", async () => {
        btn.disabled = true;
        try {
          const relationship = $("find-relationship").value || undefined;
          const c = await api("POST", "/connections", { body: { person_id: p.id, relationship } });
          upsertConnection(c.connection);
          btn.textContent = statusText(c.connection);
          say($("find-notice"), `Request sent to ${p.name}. You can write once they approve.`, "ok");
        } catch (err) {
          btn.disabled = false;
          say($("find-notice"), err.message, "error");
        }
      });
      list.append(h("li", {}, h("span", {}, h("strong", {}, p.name), ` · #${p.inmate_number}`), btn));
    }
  } catch (err) {
    say($("find-notice"), err.message, "error");
  }
});

function statusText(c) {
  if (c.blocked) return "Blocked";
  return { requested: "Waiting for approval", approved: "Connected", denied: "Declined" }[c.status] || c.status;
}

function upsertConnection(c) {
  const old = state.connections.get(c.id) || {};
  state.connections.set(c.id, { ...old, ...c, person_name: c.person_name || old.person_name });
  renderConnections();
  renderThreads();
  renderGift();
}

function renderConnections() {
  // Times not tied to one contact (the statement) are in the family's contacts' facility zone.
  const first = [...state.connections.values()][0];
  setHomeZone(first ? zoneOf(first.facility_id) : null);
  const list = $("connections");
  list.replaceChildren(...[...state.connections.values()].map((c) =>
    h("li", { dataset: { connection: c.id, status: c.status } },
      h("span", {}, c.person_name || c.person_id), h("span", { class: "badge" }, statusText(c)))));
  if (!state.connections.size) list.append(h("li", { class: "muted" }, "None yet."));
}

// ---------- messages ----------
function contactOf(personId) {
  return [...state.connections.values()].find((c) => c.person_id === personId);
}

function pricesFor(personId) {
  const c = contactOf(personId);
  const f = c && state.facilities.get(c.facility_id);
  return { ...state.pricing.prices, ...((f && f.settings && f.settings.prices) || {}) };
}

function priceFor(personId) {
  return pricesFor(personId).message;
}

function renderThreads() {
  const list = $("threads");
  const contacts = [...state.connections.values()];
  $("no-threads").hidden = contacts.length > 0;
  list.replaceChildren(...contacts.map((c) => {
    const unread = state.inbox ? state.inbox.unread(c.person_id) : 0;
    const last = state.inbox && state.inbox.last(c.person_id);
    const sub = c.status !== "approved" ? statusText(c) : last ? (last.locked ? "Collect message" : (last.body || "").slice(0, 40)) : "No messages yet";
    const btn = h("button", { type: "button", "aria-current": String(state.current === c.person_id),
                              dataset: { person: c.person_id } },
      h("span", {}, h("strong", {}, c.person_name || "Contact"), h("br"), h("span", { class: "sub" }, sub)),
      unread ? h("span", { class: "count", "aria-label": `${unread} unread` }, unread) : null);
    btn.addEventListener("click", () => openThread(c.person_id));
    return h("li", {}, btn);
  }));
}

function openThread(personId) {
  if (state.current !== personId) clearAttached();
  state.current = personId;
  renderThreads();
  renderThread();
  $("compose-body").focus();
}

// On a phone the open thread takes the contact list's place (app.css); Back brings the list
// back, focus on the contact just left.
$("thread-back").addEventListener("click", () => {
  const left = state.current;
  state.current = null;
  renderThreads();
  renderThread();
  const btn = [...$("threads").querySelectorAll("button")].find((b) => b.dataset.person === left);
  if (btn) btn.focus();
});

async function payToOpen(msg) {
  say($("compose-notice"), "");
  try {
    const r = await api("POST", `/messages/${encodeURIComponent(msg.id)}/open`);
    state.inbox.upsert(r.message);
    renderThread();
  } catch (err) {
    say($("compose-notice"), err.code === "insufficient_credits" ? "Not enough credits: buy credits to open this message." : err.message, "error");
  }
}

const opening = new Set();
function markRead(msgs) {
  if (document.visibilityState === "hidden") return;
  for (const m of msgs) {
    if (m.from === state.me.id || m.opened_at || m.locked || m.status !== "delivered" || opening.has(m.id)) continue;
    opening.add(m.id);
    api("POST", `/messages/${encodeURIComponent(m.id)}/open`)
      .then((r) => { state.inbox.upsert(r.message); })
      .catch(() => {})
      .finally(() => opening.delete(m.id));
  }
}

function renderThread(keepScroll = false) {
  const personId = state.current;
  $("thread").hidden = !personId;
  $("chat").classList.toggle("in-thread", Boolean(personId));
  if (!personId) return;
  const c = contactOf(personId);
  $("thread-h").textContent = c ? `${c.person_name || "Contact"} · ${statusText(c)}` : "";
  const msgs = state.inbox.thread(personId);
  const list = $("messages");
  const fromName = c ? c.person_name : null;
  const zone = c ? zoneOf(c.facility_id) : undefined; // the contact's facility's clock
  list.replaceChildren(...msgs.map((m) => withRefund(bubble(m, state.me.id, { onOpen: payToOpen, fromName, zone }), m)));
  if (!msgs.length) list.append(h("li", { class: "muted" }, "No messages yet."));
  if (!keepScroll) list.scrollTop = list.scrollHeight;
  // Hidden when the first load already holds the whole history (no older page exists).
  $("thread-older").hidden = state.historyComplete || olderDone.has(personId) || !msgs.length;
  typing.render();
  markRead(msgs);
  renderCompose();
}

function renderCompose() {
  if (!state.current || !state.me || !state.pricing) return; // shown once GET /pricing answers
  const c = contactOf(state.current);
  const prices = pricesFor(state.current);
  const n = attached.length;
  const price = prices.message + prices.photo * n;
  const approved = c && c.status === "approved" && !c.blocked;
  $("compose").hidden = !approved;
  const short = state.balance < price;
  const parts = n ? ` (${prices.message} + ${n} photo${n > 1 ? "s" : ""} × ${prices.photo})` : "";
  $("compose-price").textContent = short
    ? `Sending costs ${price} credits${parts}; you have ${state.balance}. Buy credits to send.`
    : `Sending costs ${price} credits${parts} (balance after: ${state.balance - price}).`;
  $("compose-body").required = n === 0;
  $("send").textContent = `Send (${price} credits)`;
  $("send").disabled = short;
}

let sendKey = null;
$("compose").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = $("compose-body").value;
  if ((!body.trim() && !attached.length) || !state.current) return;
  $("send").disabled = true;
  sendKey = sendKey || newKey();
  try {
    // Each photo is uploaded once; a retry after a failed send reuses the ids already known.
    for (const [i, a] of attached.entries()) {
      if (a.photoId) continue;
      say($("compose-notice"), `Uploading photo ${i + 1} of ${attached.length}…`);
      a.photoId = (await upload("/photos", a.file)).photo_id;
    }
    const photo_ids = attached.map((a) => a.photoId);
    const r = await api("POST", "/messages", { key: sendKey, body: { to: state.current, body, photo_ids } });
    sendKey = null;
    state.inbox.upsert(r.message);
    clearAttached();
    $("compose-body").value = "";
    say($("compose-notice"), "");
    renderThread();
  } catch (err) {
    if (err.status && err.status < 500) sendKey = null;
    say($("compose-notice"), err.message, "error");
  } finally {
    renderCompose();
  }
});
$("compose-body").addEventListener("input", () => { sendKey = null; sendTyping(); });
$("compose-body").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) $("compose").requestSubmit();
});

// ---------- photos ----------
// Attach (file input), preview before sending, upload each with POST /photos, then send the
// message with photo_ids. The form's controls are added here so index.html stays as it was.
const MAX_PHOTOS = 5; // server default photos_per_message_max
let attached = []; // [{file, url, photoId?}]

const photoInput = h("input", { type: "file", id: "compose-photos", accept: "image/jpeg,image/png",
                                multiple: true, class: "sr-only" });
const photoLabel = h("label", { for: "compose-photos", class: "attach" }, "Attach photos");
const photoHint = h("span", { class: "muted", id: "compose-photos-hint" },
                    ` JPEG or PNG, up to ${MAX_PHOTOS}; each photo costs extra and may be held for review.`);
const previews = h("ul", { class: "previews", id: "compose-previews", "aria-label": "Photos to send" });
photoInput.setAttribute("aria-describedby", "compose-photos-hint");
$("compose-body").after(h("div", { class: "attach-row" }, photoInput, photoLabel, photoHint), previews);

photoInput.addEventListener("change", () => {
  const files = [...photoInput.files];
  photoInput.value = "";
  const room = MAX_PHOTOS - attached.length;
  for (const file of files.slice(0, Math.max(room, 0))) {
    attached.push({ file, url: URL.createObjectURL(file) });
  }
  say($("compose-notice"), files.length > room ? `At most ${MAX_PHOTOS} photos per message.` : "",
      files.length > room ? "error" : "info");
  sendKey = null;
  renderPreviews();
});

function renderPreviews() {
  previews.replaceChildren(...attached.map((a, i) => {
    const remove = h("button", { type: "button", class: "remove", "aria-label": `Remove photo ${i + 1} (${a.file.name})` }, "×");
    remove.addEventListener("click", () => {
      URL.revokeObjectURL(a.url);
      attached.splice(i, 1);
      sendKey = null;
      renderPreviews();
      photoLabel.focus();
    });
    return h("li", {}, h("img", { src: a.url, alt: `Photo ${i + 1}: ${a.file.name}` }), remove);
  }));
  renderCompose();
}

function clearAttached() {
  for (const a of attached) URL.revokeObjectURL(a.url);
  attached = [];
  renderPreviews();
}

/** For a rejected paid message, the refund beside its bubble. */
function withRefund(li, msg) {
  if (msg.from === state.me.id && msg.status === "rejected" && !msg.cod && msg.price) {
    li.querySelector(".meta").append(h("span", { class: "badge refund", "data-refund": msg.price },
                                       `${msg.price} credits returned`));
  }
  return li;
}

// ---------- older messages of one thread (GET /messages?with=, both folders) ----------
const OLDER_PAGE = 20;
const olderDone = new Set(); // contacts whose whole history is loaded
const isOlder = (a, b) => a.created_at < b.created_at || (a.created_at === b.created_at && a.id < b.id);

async function loadOlder() {
  const personId = state.current;
  const t = state.inbox.thread(personId); // oldest first
  const anchors = { inbox: t.find((m) => m.from === personId && m.status === "delivered"),
                    sent: t.find((m) => m.from === state.me.id) };
  const url = (folder) => `/messages?folder=${folder}&with=${encodeURIComponent(personId)}&limit=${OLDER_PAGE}`
    + (anchors[folder] ? `&before=${encodeURIComponent(anchors[folder].id)}` : "");
  $("thread-older").disabled = true;
  try {
    const [inbox, sent] = await Promise.all([api("GET", url("inbox")), api("GET", url("sent"))]);
    // A folder with more pages leaves a gap below its oldest row: keep only what is newer than
    // that, so the thread never shows a hole; the next click fetches the rest.
    let floor = null;
    for (const page of [inbox, sent]) {
      const last = page.messages.at(-1);
      if (page.next_before && last && (!floor || isOlder(floor, last))) floor = last;
    }
    const fresh = [...inbox.messages, ...sent.messages].filter((m) => !state.inbox.byId.has(m.id)
      && (!floor || !isOlder(m, floor)));
    for (const m of fresh) state.inbox.upsert(m);
    if (!inbox.next_before && !sent.next_before) olderDone.add(personId);
    say($("compose-notice"), fresh.length ? "" : "No older messages.");
    renderThread(true);
  } catch (err) {
    say($("compose-notice"), err.message, "error");
  } finally {
    $("thread-older").disabled = false;
  }
}
$("thread-older").addEventListener("click", loadOlder);

// ---------- typing indicators (threads.js Typing) ----------
const typing = new Typing(state, $("typing"), (id) => (contactOf(id) || {}).person_name || "Your contact");

function sendTyping() {
  const c = state.current && contactOf(state.current);
  if (c && c.status === "approved" && $("compose-body").value) typing.send(state.current);
}

// ---------- give credits (POST /gifts, to an approved contact) ----------
let giftKey = null; // kept across retries of one gift
function renderGift() {
  const sel = $("gift-to");
  const chosen = sel.value;
  const contacts = [...state.connections.values()].filter((c) => c.status === "approved" && !c.blocked);
  sel.replaceChildren(...contacts.map((c) => h("option", { value: c.person_id }, c.person_name || "Contact")));
  if (chosen) sel.value = chosen;
  $("gift-none").hidden = contacts.length > 0;
  $("gift-form").hidden = !contacts.length;
  const max = state.pricing ? state.pricing.gift_credits_max : 0;
  $("gift-credits").max = String(Math.min(state.balance, max || state.balance));
  const n = Number($("gift-credits").value) || 0;
  const short = n > state.balance;
  $("gift-summary").textContent = n
    ? (short ? `You have ${state.balance} credits.` : `Your balance after: ${state.balance - n} credits.`) : "";
  $("gift-send").disabled = !n || short;
  $("gift-send").textContent = n ? `Give ${n} credits` : "Give";
}
$("gift-to").addEventListener("change", () => { giftKey = null; renderGift(); });
$("gift-credits").addEventListener("input", () => { giftKey = null; renderGift(); });
$("gift-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const to = $("gift-to").value;
  const credits = Number($("gift-credits").value);
  if (!to || !Number.isInteger(credits) || credits < 1) return;
  const name = $("gift-to").selectedOptions[0].textContent;
  $("gift-send").disabled = true;
  giftKey = giftKey || newKey();
  try {
    const r = await api("POST", "/gifts", { key: giftKey, body: { to, credits } });
    giftKey = null;
    setBalance(r.balance);
    $("gift-credits").value = "";
    say($("gift-notice"), `Gave ${credits} credits to ${name}.`, "ok");
  } catch (err) {
    if (err.status && err.status < 500) giftKey = null;
    say($("gift-notice"), err.message, "error");
  } finally {
    renderGift();
  }
});

// ---------- data and live events ----------
async function reloadAll() {
  setBalance(await loadConversations(state));
  renderConnections();
  renderThreads();
  renderThread();
  await state.visitsUi?.load().catch(() => {}); // video visits (booking.js)
}

function onEvent(type, data) {
  state.visitsUi?.onEvent(type, data); // video visits (booking.js)
  if (type === "typing") {
    typing.heard(data.from);
    return;
  }
  if (type === "message.new") typing.done(data.from);
  if (type === "balance" && tabs.current === "statement") statement.load(true);
  applyEvent(state, type, data, { setBalance, renderThreads, renderThread, upsertConnection });
}

async function start() {
  const me = await api("GET", "/me");
  if (me.account.role !== "family") {
    location.href = "/static/kiosk.html";
    return;
  }
  state.me = me.account;
  state.inbox = new Inbox(me.account.id);
  setBalance(me.balance);
  $("me-name").textContent = me.account.name;
  $("card-name").value = me.account.name;
  $("auth").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  showTab("messages");
  await Promise.all([loadFacilities(), loadPricing()]);
  state.visitsUi = new FamilyVisits(state); // video visits (booking.js)
  await reloadAll();
  state.socket = new KinwireSocket({
    onEvent, onReset: reloadAll,
    onUnauthorised: () => location.reload(),
  }).start();
  window.kinwire = state; // for tests and the curious
  Object.defineProperty(state, "statementPage", { set(n) { statement.pageSize = n; } });
  document.body.dataset.ready = "signed-in";
}

(async () => {
  try {
    await start();
  } catch (err) {
    $("auth").hidden = false;
    document.body.dataset.ready = "signed-out";
  }
})();
