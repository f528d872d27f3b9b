// The staff console's review queue (docs/clients.md): held messages with photo previews,
// filtered by type and age; approve, or reject with a reason, one at a time or a selection at
// once (POST /review/decisions: each message decided once, whoever else decides it first).
import { api } from "../api.js";
import { $, h, say } from "../dom.js";

const thumb = (id) => `/api/v1/photos/${encodeURIComponent(id)}/thumb`;

/** The queue, given the console's shared helpers: scoped(path) adds an admin's facility,
 * names (names.js), when(iso), and decided() to refresh what a decision changes. */
export function reviewQueue({ scoped, names, when, decided }) {
  let shownKey = "";
  let shown = [];
  const selected = new Set();

  function query() {
    const q = new URLSearchParams();
    if ($("review-kind").value) q.set("kind", $("review-kind").value);
    if ($("review-age").value) q.set("older_than_minutes", $("review-age").value);
    const s = q.toString();
    return s ? `/review?${s}` : "/review";
  }

  async function load(force = false) {
    const r = await api("GET", scoped(query()));
    const key = r.messages.map((m) => m.id).join(",");
    if (!force && key === shownKey) return; // keep a reason being typed
    shownKey = key;
    shown = r.messages;
    for (const id of [...selected]) if (!shown.some((m) => m.id === id)) selected.delete(id);
    await names.know(shown.flatMap((m) => [m.from, m.to]));
    $("review-count").textContent = String(shown.length);
    $("queue-empty").hidden = shown.length > 0;
    $("queue").replaceChildren(...shown.map(item));
    showSelection();
  }

  function showSelection() {
    const n = selected.size;
    $("bulk-approve").textContent = `Approve selected (${n})`;
    $("bulk-reject").textContent = `Reject selected (${n})`;
    $("bulk-approve").disabled = n === 0;
    $("bulk-reject").disabled = n === 0;
    $("select-all").checked = n > 0 && n === shown.length;
    $("select-all").indeterminate = n > 0 && n < shown.length;
  }

  function item(m) {
    const from = names.get(m.from);
    const to = names.get(m.to);
    const ids = m.photo_ids || [];
    const reasonId = `reason-${m.id}`;
    const pick = h("input", { type: "checkbox", "aria-label": `Select the message from ${from} to ${to}`,
                              dataset: { select: m.id } });
    pick.checked = selected.has(m.id);
    pick.addEventListener("change", () => {
      if (pick.checked) selected.add(m.id); else selected.delete(m.id);
      showSelection();
    });
    const approve = h("button", { type: "button", class: "primary", "aria-label": `Approve message from ${from}` }, "Approve");
    approve.addEventListener("click", () => decide([m.id], "approve", null, approve));
    const reason = h("input", { id: reasonId, required: true, maxlength: "500", autocomplete: "off" });
    const reject = h("button", { type: "submit", class: "danger", "aria-label": `Reject message from ${from}` }, "Reject");
    const form = h("form", { class: "actions" },
      h("div", {}, h("label", { for: reasonId }, `Reason for rejecting (sent to ${from})`), reason),
      h("div", {}, reject));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (!reason.value.trim()) { reason.focus(); return; }
      decide([m.id], "reject", reason.value.trim(), reject);
    });
    return h("li", { dataset: { id: m.id } },
      h("p", {}, pick, " ", h("strong", {}, from), " → ", h("strong", {}, to), " · ",
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

  function summary(results, decision, reason) {
    const done = results.filter((r) => r.outcome === (decision === "approve" ? "delivered" : "rejected"));
    const skipped = results.length - done.length;
    const verb = decision === "approve" ? "Approved" : "Rejected";
    const what = done.length === 1 ? `the message from ${names.get(shown.find((m) => m.id === done[0].id)?.from)}`
      : `${done.length} messages`;
    let text = done.length ? `${verb} ${what}` : "Nothing was decided";
    if (decision === "reject" && done.length) text += `: ${reason}. The credits went back`;
    text += ".";
    if (skipped) text += ` ${skipped === 1 ? "One was" : `${skipped} were`} already decided by someone else.`;
    return text;
  }

  async function decide(ids, decision, reason, btn) {
    btn.disabled = true;
    try {
      const r = await api("POST", "/review/decisions", { body: {
        decision, message_ids: ids, ...(decision === "reject" ? { reason } : {}) } });
      for (const id of ids) selected.delete(id);
      say($("notice"), summary(r.results, decision, reason), "ok");
    } catch (err) {
      btn.disabled = false;
      say($("notice"), err.message, "error");
    }
    await Promise.all([load(true), decided()]).catch((err) => say($("notice"), err.message, "error"));
    $("review-h").focus(); // the decided items are gone: keep keyboard users in the queue
  }

  $("select-all").addEventListener("change", () => {
    selected.clear();
    if ($("select-all").checked) for (const m of shown) selected.add(m.id);
    for (const box of document.querySelectorAll("#queue input[data-select]")) box.checked = $("select-all").checked;
    showSelection();
  });
  $("bulk-approve").addEventListener("click", () => decide([...selected], "approve", null, $("bulk-approve")));
  $("bulk-reject").addEventListener("click", () => {
    const reason = $("bulk-reason").value.trim();
    if (!reason) {
      say($("notice"), "Write a reason for rejecting the selected messages: each sender reads it.", "error");
      $("bulk-reason").focus();
      return;
    }
    decide([...selected], "reject", reason, $("bulk-reject"));
  });
  for (const id of ["review-kind", "review-age"]) {
    $(id).addEventListener("change", () => load(true).catch((e) => say($("notice"), e.message, "error")));
  }
  $("review-filters").addEventListener("submit", (ev) => ev.preventDefault());
  $("bulk").addEventListener("submit", (ev) => ev.preventDefault());
  return { load };
}
