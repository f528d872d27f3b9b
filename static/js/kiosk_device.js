// The kiosk's registration (docs/clients.md): the facility id and device token kept in
// localStorage, the token sent as X-Device-Token when a person signs in. A kiosk that is not
// set up shows only the set-up panel; once set up, a person sees only the sign-in, and staff
// open the panel with "Set up this device (staff)". Changing the registration asks for a
// device token again (the saved one is never put back in the field), which only staff have.
import { $, say } from "./dom.js";
import { t } from "./i18n.js";

export function device() {
  return { facility: localStorage.getItem("kinwire.facility") || "",
           token: localStorage.getItem("kinwire.deviceToken") || "" };
}

const registered = () => Boolean(device().facility && device().token);

/** Show the set-up panel (instead of the sign-in); `why` says why, for staff. */
export function showSetUp(why) {
  $("device-facility").value = device().facility;
  $("device-token").value = "";
  $("device").hidden = false;
  $("login-form").hidden = true;
  $("device-cancel").hidden = !registered();
  $("device-open").hidden = true;
  $("device-open").setAttribute("aria-expanded", "true");
  say($("device-notice"), why || "");
}

/** Back to the sign-in (the panel closed), or to the panel alone while not set up. */
export function showSignIn() {
  if (!registered()) {
    showSetUp(t("device.not_set_up"));
    return;
  }
  $("device").hidden = true;
  $("login-form").hidden = false;
  $("device-open").hidden = false;
  $("device-open").setAttribute("aria-expanded", "false");
  $("device-token").value = "";
}

$("device-open").addEventListener("click", () => {
  showSetUp();
  $("device-facility").focus();
});
$("device-cancel").addEventListener("click", () => {
  showSignIn();
  $("device-open").focus();
});
$("device-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem("kinwire.facility", $("device-facility").value.trim());
  localStorage.setItem("kinwire.deviceToken", $("device-token").value.trim());
  showSignIn();
  say($("login-notice"), t("device.saved"), "ok");
  $("login-number").focus();
});
