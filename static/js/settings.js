// A family's email choices (/settings): GET and PUT /api/v1/notifications. Signed out, the
// page says to log in first.
import { api } from "./api.js";
import { $, h, say } from "./dom.js";
import { has, languageSwitch, loadLanguage, t } from "./i18n.js";

await loadLanguage();
$("lang-slot").append(languageSwitch());

async function start() {
  let prefs;
  try {
    prefs = await api("GET", "/notifications");
  } catch (err) {
    say($("prefs-error"), err.status === 401 ? t("prefs.log_in_first")
      : err.message, "error");
    document.body.dataset.ready = "error";
    return;
  }
  const box = $("prefs-kinds");
  for (const [kind, label] of Object.entries(prefs.labels)) {
    const input = h("input", { type: "checkbox", id: `pref-${kind}`, name: kind });
    input.checked = prefs.kinds[kind];
    // The server's label in English; the catalogue's words for a kind it knows otherwise.
    const text = has(`prefs.kind.${kind}`) ? t(`prefs.kind.${kind}`) : label;
    box.append(h("div", {}, h("label", { class: "check" }, input, ` ${text}`)));
  }
  if (!prefs.email) say($("prefs-error"), t("prefs.no_email"), "warn");
  $("prefs-form").hidden = false;
  $("prefs-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const kinds = {};
    for (const kind of Object.keys(prefs.labels)) kinds[kind] = $(`pref-${kind}`).checked;
    try {
      await api("PUT", "/notifications", { body: { kinds } });
      say($("prefs-notice"), t("prefs.saved"), "ok");
    } catch (err) {
      say($("prefs-notice"), err.message, "error");
    }
  });
  await startPush();
  document.body.dataset.ready = "signed-in";
}

function keyBytes(b64url) {
  const b64 = (b64url + "===".slice((b64url.length + 3) % 4)).replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

// Web Push where the server has it (GET /push/key) and the browser can: the worker
// (/static/sw.js) shows what arrives; the subscription goes to POST /push/subscriptions.
async function startPush() {
  if (!("serviceWorker" in navigator) || !("PushManager" in window)) return;
  let key;
  try {
    key = (await api("GET", "/push/key")).public_key;
  } catch {
    return; // push_off: the card stays hidden
  }
  const reg = await navigator.serviceWorker.register("/static/sw.js");
  const show = (sub) => {
    $("push-on").hidden = Boolean(sub);
    $("push-off").hidden = !sub;
  };
  show(await reg.pushManager.getSubscription());
  $("push-card").hidden = false;
  $("push-on").addEventListener("click", async () => {
    try {
      if (await Notification.requestPermission() !== "granted") {
        say($("push-notice"), t("push.denied"), "warn");
        return;
      }
      const sub = await reg.pushManager.subscribe({ userVisibleOnly: true,
                                                    applicationServerKey: keyBytes(key) });
      const { endpoint, keys } = sub.toJSON();
      await api("POST", "/push/subscriptions", { body: { endpoint, keys } });
      show(sub);
      say($("push-notice"), t("push.is_on"), "ok");
    } catch (err) {
      say($("push-notice"), err.message, "error");
    }
  });
  $("push-off").addEventListener("click", async () => {
    const sub = await reg.pushManager.getSubscription();
    if (sub) {
      await api("POST", "/push/subscriptions/delete", { body: { endpoint: sub.endpoint } });
      await sub.unsubscribe();
    }
    show(null);
    say($("push-notice"), t("push.is_off"), "ok");
  });
}

start();
