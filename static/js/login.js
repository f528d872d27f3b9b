// The e-mail sign-in form of the family app and the staff console.
import { api } from "./api.js";
import { $, say } from "./dom.js";

/** #login-form, #login-email, #login-password, #login-notice: sign in, then `start()`; errors
 * go to the notice. */
export function bindEmailLogin(start) {
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
}
