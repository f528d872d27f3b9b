// The staff console (docs/clients.md): log in, the review queue with photo previews (approve,
// or reject with a reason), the facility's visits with End for those in a call, the audit log.
// Plain HTTP with the session cookie; the queue and visits are polled while the page is shown.
import { api, h, say } from "./api.js";

const $ = (id) => document.getElementById(id);
const IN_CALL = new Set(["open", "live", "paused"]);
const POLL_MS = 5000;
const state = { me: null, names: new Map(), queueKey: "", timer: null };

const when = (iso) => new Date(iso).toLocaleString([], { month: "short", day: "numeric",
                                                        hour: "numeric", minute: "2-digit" });
const nameOf = (id) => state.names.get(id) || id;
const thumb = (id) => `/api/v1/photos/${encodeURIComponent(id)}/thumb`;

// ---------- sign in / out ----------
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

$("logout").addEventListener("click", async () => {
  try { await api("POST", "/auth/logout"); } catch { /* signed out either way */ }
  location.reload();
});

// ---------- names (staff see the facility's connections) ----------
async function loadNames() {
  const r = await api("GET", "/connections");
  for (const c of r.connections) {
    if (c.family_name) state.names.set(c.family_id, c.family_name);
    if (c.person_name) state.names.set(c.person_id, c.person_name);
  }
}

// ---------- review queue ----------
async function loadReview(force = false) {
  const r = await api("GET", "/review");
  const key = r.messages.map((m) => m.id).join(",");
  if (!force && key === state.queueKey) return; // keep a reason being typed
  state.queueKey = key;
  if (r.messages.some((m) => !state.names.has(m.from) || !state.names.has(m.to))) await loadNames();
  $("review-count").textContent = String(r.messages.length);
  $("queue-empty").hidden = r.messages.length > 0;
  $("queue").replaceChildren(...r.messages.map(reviewItem));
}

function reviewItem(m) {
  const from = nameOf(m.from);
  const to = nameOf(m.to);
  const ids = m.photo_ids || [];
  const reasonId = `reason-${m.id}`;
  const approve = h("button", { type: "button", class: "primary", "aria-label": `Approve message from ${from}` }, "Approve");
  approve.addEventListener("click", () => decide(m, "approve", null, approve));
  const reason = h("input", { id: reasonId, required: true, maxlength: "500", autocomplete: "off" });
  const reject = h("button", { type: "submit", class: "danger", "aria-label": `Reject message from ${from}` }, "Reject");
  const form = h("form", { class: "actions" },
    h("div", {}, h("label", { for: reasonId }, `Reason for rejecting (sent to ${from})`), reason),
    h("div", {}, reject));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!reason.value.trim()) { reason.focus(); return; }
    decide(m, "reject", reason.value.trim(), reject);
  });
  return h("li", { dataset: { id: m.id } },
    h("p", {}, h("strong", {}, from), " → ", h("strong", {}, to), " · ",
      h("time", { datetime: m.created_at }, when(m.created_at)), " · ",
      h("span", { class: "badge held" }, `Held: ${m.held_for || "review"}`), " ",
      h("span", { class: "muted" }, `${m.price} credits${m.cod ? ", collect" : ""}`)),
    m.body ? h("p", { class: "body" }, m.body) : h("p", { class: "muted" }, "(no text)"),
    ids.length ? h("div", { class: "thumbs" }, ...ids.map((id, i) =>
      h("a", { href: `/api/v1/photos/${encodeURIComponent(id)}`, target: "_blank", rel: "noopener" },
        h("img", { src: thumb(id), alt: `Photo ${i + 1} of ${ids.length} from ${from}` })))) : null,
    h("div", { class: "actions" }, h("div", {}, approve)),
    form);
}

async function decide(m, action, reason, btn) {
  btn.disabled = true;
  try {
    await api("POST", `/review/${encodeURIComponent(m.id)}/${action}`,
              action === "reject" ? { body: { reason } } : {});
    say($("notice"), action === "approve" ? `Approved the message from ${nameOf(m.from)}.`
      : `Rejected the message from ${nameOf(m.from)}: ${reason}. The credits went back.`, "ok");
  } catch (err) {
    btn.disabled = false;
    say($("notice"), err.message, "error");
  }
  await Promise.all([loadReview(true), loadAudit()]).catch((err) => say($("notice"), err.message, "error"));
  $("review-h").focus(); // the decided item is gone: keep keyboard users in the queue
}

// ---------- visits ----------
async function loadVisits() {
  const now = new Date();
  const from = new Date(now.getTime() - 12 * 3600e3).toISOString();
  const to = new Date(now.getTime() + 12 * 3600e3).toISOString();
  const r = await api("GET", `/visits?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
  if (r.visits.some((v) => !state.names.has(v.family_id) || !state.names.has(v.person_id))) await loadNames();
  $("visits-empty").hidden = r.visits.length > 0;
  $("visit-list").replaceChildren(...r.visits.map((v) => {
    const who = `${nameOf(v.family_id)} and ${nameOf(v.person_id)}`;
    let end = null;
    if (IN_CALL.has(v.status)) {
      end = h("button", { type: "button", class: "danger", "aria-label": `End the visit of ${who}` }, "End");
      end.addEventListener("click", async () => {
        end.disabled = true;
        try {
          await api("POST", `/visits/${encodeURIComponent(v.id)}/end`, { body: {} });
          say($("notice"), `Ended the visit of ${who}.`, "ok");
        } catch (err) {
          say($("notice"), err.message, "error");
        }
        await Promise.all([loadVisits(), loadAudit()]).catch(() => {});
      });
    }
    return h("li", { dataset: { visit: v.id, status: v.status } },
      h("span", {}, h("strong", {}, who), h("br"),
        h("span", { class: "muted" }, `${when(v.start)} – ${when(v.end)} · ${v.media}`)),
      h("span", { class: `badge ${v.status === "live" ? "read" : ""}` },
        v.end_reason ? `${v.status} (${v.end_reason.replace(/_/g, " ")})` : v.status),
      end);
  }));
}

// ---------- audit log ----------
async function loadAudit() {
  const r = await api("GET", "/audit?limit=50");
  $("audit-rows").replaceChildren(...r.entries.map((e) => {
    const by = nameOf(e.actor_id) === e.actor_id ? e.actor_role : `${nameOf(e.actor_id)} (${e.actor_role})`;
    const details = e.details && Object.keys(e.details).length
      ? Object.entries(e.details).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join("; ")
      : "";
    return h("li", { dataset: { action: e.action } },
      h("p", {}, h("strong", {}, e.action), " by ", by, " · ", h("time", { datetime: e.at }, when(e.at))),
      e.target ? h("p", { class: "muted" }, `Target: ${nameOf(e.target)}`) : null,
      details ? h("p", { class: "muted details" }, details) : null);
  }));
}

$("review-refresh").addEventListener("click", () => loadReview(true).catch((e) => say($("notice"), e.message, "error")));
$("visits-refresh").addEventListener("click", () => loadVisits().catch((e) => say($("notice"), e.message, "error")));
$("audit-refresh").addEventListener("click", () => loadAudit().catch((e) => say($("notice"), e.message, "error")));

function poll() {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    if (document.visibilityState !== "hidden") {
      await Promise.all([loadReview(), loadVisits()]).catch(() => {});
    }
    poll();
  }, POLL_MS);
}

async function start() {
  const me = await api("GET", "/me");
  if (me.account.role !== "staff" && me.account.role !== "admin") {
    throw new Error("This console is for facility staff.");
  }
  state.me = me.account;
  $("me-name").textContent = me.account.name;
  $("login-form").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  await loadNames();
  await Promise.all([loadReview(true), loadVisits(), loadAudit()]);
  poll();
  window.kinwire = state; // for tests and the curious
  document.body.dataset.ready = "signed-in";
}

(async () => {
  try {
    await start();
  } catch (err) {
    $("login-form").hidden = false;
    if (state.me === null && err.status !== 401) say($("login-notice"), err.message, "error");
    document.body.dataset.ready = "signed-out";
  }
})();
