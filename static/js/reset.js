// The password-reset page (/reset): without a token, ask for an emailed link; with the link's
// token (in the fragment, #token=...), set a new password. docs/security.md, "Password reset".
import { api } from "./api.js";
import { $, say } from "./dom.js";
import { language, languageSwitch, loadLanguage, t } from "./i18n.js";

await loadLanguage();
$("lang-slot").append(languageSwitch());

const token = new URLSearchParams(location.hash.slice(1)).get("token");
// A link opened in a tab already on this page changes only the fragment: start again with it.
addEventListener("hashchange", () => location.reload());

if (token) {
  // Out of the address bar and history at once: the page keeps it in memory only.
  history.replaceState(null, "", location.pathname);
  $("reset-form").hidden = false;
  $("reset-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const password = $("reset-password").value;
    if (password !== $("reset-again").value) {
      say($("reset-notice"), t("reset.differ"), "error");
      return;
    }
    try {
      await api("POST", "/auth/reset/confirm", { body: { token, password } });
      $("reset-form").querySelectorAll("input, button").forEach((el) => { el.disabled = true; });
      say($("reset-notice"), t("reset.done"), "ok");
    } catch (err) {
      say($("reset-notice"), err.message, "error");
    }
  });
} else {
  $("forgot-form").hidden = false;
  $("forgot-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await api("POST", "/auth/reset", { body: { email: $("forgot-email").value.trim() } });
      // The server's words hold the link's lifetime; another language says it more generally.
      say($("forgot-notice"), language() === "en" ? r.message : t("reset.sent"), "ok");
    } catch (err) {
      say($("forgot-notice"), err.message, "error");
    }
  });
}
