// The family web app (docs/clients.md): sign up and log in, buy credits, find a person and ask
// to connect, and a chat-style inbox kept live by the shared socket.
import { api, ApiError, dollars, h, newKey, say } from "./api.js";
import { KinwireSocket } from "./socket.js";
import { Inbox, applyEvent, bubble, loadConversations } from "./threads.js";

// The server's purchase terms: credits are bought in blocks of KINWIRE_CREDIT_BLOCK (500) and
// each purchase carries KINWIRE_PURCHASE_FEE_CENTS (150). The API does not publish them yet
// (docs/clients.md, "Server changes wanted"), so these mirror server/settings.py's defaults;
// the receipt after paying shows what the server actually charged.
const CREDIT_BLOCK = 500;
const FEE_CENTS = 150;
const CENTS_PER_CREDIT = 1;
const DEFAULT_PRICES = { message: 50, photo: 100, visit_minute: 50 };

const $ = (id) => document.getElementById(id);
const state = {
  me: null, balance: 0, facilities: new Map(), connections: new Map(), inbox: null,
  current: null, socket: null,
};

// ---------- signed out ----------
$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  say($("login-notice"), "");
  try {
    await api("POST", "/auth/login", { body: { email: $("login-email").value.trim(),
                                               password: $("login-password").value } });
    await start();
  } catch (err) {
    say($("login-notice"), err.message, "error");
  }
});

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
const tabs = ["messages", "find", "credits"];
function showTab(name) {
  for (const t of tabs) {
    $(`tab-${t}`).setAttribute("aria-selected", String(t === name));
    $(`panel-${t}`).hidden = t !== name;
  }
  document.body.dataset.tab = name;
}
for (const t of tabs) $(`tab-${t}`).addEventListener("click", () => showTab(t));
document.querySelector("nav.tabs").addEventListener("keydown", (ev) => {
  if (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft") return;
  const i = tabs.indexOf(document.body.dataset.tab || "messages");
  const next = tabs[(i + (ev.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
  showTab(next);
  $(`tab-${next}`).focus();
});

// ---------- balance ----------
function setBalance(n) {
  state.balance = n;
  $("balance").textContent = `${n} credits`;
  $("balance").dataset.balance = String(n);
  renderCompose();
}

// ---------- credits ----------
function renderQuote() {
  const credits = Number($("buy-credits").value);
  const price = credits * CENTS_PER_CREDIT;
  const total = price + FEE_CENTS;
  $("buy-price").textContent = dollars(price);
  $("buy-fee").textContent = dollars(FEE_CENTS);
  $("buy-total").textContent = dollars(total);
  $("buy-summary").textContent = `${credits} credits: ${dollars(price)} + ${dollars(FEE_CENTS)} fee = ${dollars(total)} total`;
  $("pay").textContent = `Pay ${dollars(total)}`;
}
for (const n of [1, 2, 4, 10]) {
  const credits = n * CREDIT_BLOCK;
  $("buy-credits").append(h("option", { value: credits }, `${credits} credits`));
}
$("buy-credits").addEventListener("change", renderQuote);
renderQuote();

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
  const sel = $("find-facility");
  sel.replaceChildren(...r.facilities.map((f) => h("option", { value: f.id }, f.name)));
}

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
          const c = await api("POST", "/connections", { body: { person_id: p.id } });
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
}

function renderConnections() {
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
  return { ...DEFAULT_PRICES, ...((f && f.settings && f.settings.prices) || {}) };
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

function renderThread() {
  const personId = state.current;
  $("thread").hidden = !personId;
  if (!personId) return;
  const c = contactOf(personId);
  $("thread-h").textContent = c ? `${c.person_name || "Contact"} · ${statusText(c)}` : "";
  const msgs = state.inbox.thread(personId);
  const list = $("messages");
  list.replaceChildren(...msgs.map((m) => withPhotos(bubble(m, state.me.id, { onOpen: payToOpen }), m)));
  if (!msgs.length) list.append(h("li", { class: "muted" }, "No messages yet."));
  list.scrollTop = list.scrollHeight;
  markRead(msgs);
  renderCompose();
}

function renderCompose() {
  if (!state.current || !state.me) return;
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
      a.photoId = await uploadPhoto(a.file);
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
$("compose-body").addEventListener("input", () => { sendKey = null; });
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

async function uploadPhoto(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  let resp;
  try {
    resp = await fetch("/api/v1/photos", { method: "POST", body: form, credentials: "same-origin" });
  } catch {
    throw new ApiError(0, "network", "The server could not be reached. Check your connection.");
  }
  const data = await resp.json().catch(() => null);
  if (!resp.ok) {
    const e = (data && data.error) || {};
    throw new ApiError(resp.status, e.code || `http_${resp.status}`,
                       `${file.name}: ${e.message || `the server answered ${resp.status}.`}`, e.details);
  }
  return data.photo_id;
}

/** A bubble with its photos' thumbnails and, for a rejected paid message, the refund. */
function withPhotos(li, msg) {
  const ids = msg.photo_ids || [];
  if (ids.length) {
    li.querySelector(".photos")?.remove();
    li.insertBefore(h("div", { class: "thumbs" }, ...ids.map((id, i) =>
      h("a", { href: `/api/v1/photos/${encodeURIComponent(id)}`, target: "_blank", rel: "noopener" },
        h("img", { src: `/api/v1/photos/${encodeURIComponent(id)}/thumb`, alt: `Photo ${i + 1} of ${ids.length}`,
                   loading: "lazy" })))), li.querySelector(".meta"));
  }
  if (msg.from === state.me.id && msg.status === "rejected" && !msg.cod && msg.price) {
    li.querySelector(".meta").append(h("span", { class: "badge refund", "data-refund": msg.price },
                                       `${msg.price} credits returned`));
  }
  return li;
}

// ---------- data and live events ----------
async function reloadAll() {
  setBalance(await loadConversations(state));
  renderConnections();
  renderThreads();
  renderThread();
}

function onEvent(type, data) {
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
  await loadFacilities();
  await reloadAll();
  state.socket = new KinwireSocket({
    onEvent, onReset: reloadAll,
    onUnauthorised: () => location.reload(),
  }).start();
  window.kinwire = state; // for tests and the curious
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
