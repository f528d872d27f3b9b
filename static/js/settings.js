// A family's email choices (/settings): GET and PUT /api/v1/notifications. Signed out, the
// page says to log in first.
import { api, h, say } from "./api.js";

const $ = (id) => document.getElementById(id);

async function start() {
  let prefs;
  try {
    prefs = await api("GET", "/notifications");
  } catch (err) {
    say($("prefs-error"), err.status === 401 ? "Log in to Kinwire first, then come back here."
      : err.message, "error");
    document.body.dataset.ready = "error";
    return;
  }
  const box = $("prefs-kinds");
  for (const [kind, label] of Object.entries(prefs.labels)) {
    const input = h("input", { type: "checkbox", id: `pref-${kind}`, name: kind });
    input.checked = prefs.kinds[kind];
    box.append(h("div", {}, input, h("label", { for: `pref-${kind}` }, label)));
  }
  if (!prefs.email) say($("prefs-error"), "Email is not set up on this service yet.", "warn");
  $("prefs-form").hidden = false;
  $("prefs-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const kinds = {};
    for (const kind of Object.keys(prefs.labels)) kinds[kind] = $(`pref-${kind}`).checked;
    try {
      await api("PUT", "/notifications", { body: { kinds } });
      say($("prefs-notice"), "Saved.", "ok");
    } catch (err) {
      say($("prefs-notice"), err.message, "error");
    }
  });
  document.body.dataset.ready = "signed-in";
}

start();
