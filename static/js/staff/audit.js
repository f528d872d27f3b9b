// The staff console's audit log (docs/clients.md): each entry as the server's sentence with
// names, filtered by who, what and the facility's dates, paged back, and the same filters as a
// CSV download (GET /audit/export: the server checks who may read it, as for the page).
import { api } from "../api.js";
import { $, h, say } from "../dom.js";

/** The log, given scoped(path) (adds an admin's facility) and when(iso). */
export function auditLog({ scoped, when }) {
  let next = null;

  function filters() {
    const q = new URLSearchParams();
    for (const [key, id] of [["actor_id", "audit-actor"], ["action", "audit-action"],
                             ["from", "audit-from"], ["to", "audit-to"]]) {
      if ($(id).value) q.set(key, $(id).value);
    }
    return q;
  }

  function choices(select, options) {
    const keep = select.value;
    select.replaceChildren(select.options[0], ...options.map(([value, text]) => h("option", { value }, text)));
    select.value = options.some(([value]) => value === keep) ? keep : "";
  }

  async function load(more = false) {
    const q = filters();
    q.set("limit", "50");
    if (more && next) q.set("before", String(next));
    const r = await api("GET", scoped(`/audit?${q}`));
    next = r.next_before;
    choices($("audit-actor"), r.actors.map((a) => [a.id, a.name]));
    choices($("audit-action"), Object.entries(r.actions));
    const csv = filters();
    $("audit-csv").href = scoped(`/api/v1/audit/export${csv.toString() ? `?${csv}` : ""}`);
    $("audit-more").hidden = !next;
    say($("audit-notice"), !more && !r.entries.length ? "No entries match." : "");
    $("audit-rows")[more ? "append" : "replaceChildren"](...r.entries.map((e) =>
      h("li", { dataset: { action: e.action } },
        h("p", {}, e.sentence),
        h("p", { class: "muted" }, h("time", { datetime: e.at }, when(e.at))))));
  }

  const failed = (e) => say($("audit-notice"), e.message, "error");
  $("audit-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    load().catch(failed);
  });
  $("audit-refresh").addEventListener("click", () => load().catch(failed));
  $("audit-more").addEventListener("click", () => load(true).catch(failed));
  return { load };
}
