// One clock for the three apps (docs/clients.md, "Times"): every time a person reads is
// formatted here, with Intl.DateTimeFormat, in the time zone of the facility it belongs to and
// labelled with that zone: "Sat 5 Dec, 23:00 CST". A family, a resident and an officer looking
// at the same visit or message read the same words, whatever their browser's zone or locale.

import { dateLocale } from "./i18n.js";

// Day-month order and a 24-hour clock in every browser, in the reader's language (i18n.js):
// en-GB for English, whatever the browser's own locale.
// en-US knows the common North American abbreviations (CST, EDT, PST); for other zones it
// says "GMT-3", which is still unambiguous.
const LABEL_LOCALE = "en-US";

const formats = new Map(); // Intl.DateTimeFormat objects are costly to make: one per shape
const zones = new Map(); // facility id -> IANA zone
let home = null; // the zone of times that belong to no facility in particular

function format(locale, zone, options) {
  const key = `${locale}|${zone}|${JSON.stringify(options)}`;
  let f = formats.get(key);
  if (!f) {
    f = new Intl.DateTimeFormat(locale, { ...options, timeZone: zone });
    formats.set(key, f);
  }
  return f;
}

/** The browser's own zone (what a time with no facility falls back to). */
export function browserZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}

/** Learn facilities' zones (GET /facilities rows: {id, timezone}). */
export function rememberZones(facilities) {
  for (const f of facilities) if (f && f.id && f.timezone) zones.set(f.id, f.timezone);
}

/** The zone for times not tied to a facility: the app's own facility (kiosk, staff) or the
 * family's contacts' facility. */
export function setHomeZone(zone) {
  home = zone || null;
}

/** A facility's zone when known, else the home zone, else the browser's. */
export function zoneOf(facilityId) {
  return zones.get(facilityId) || home || browserZone();
}

/** The home zone (or the browser's). */
export function homeZone() {
  return home || browserZone();
}

const instant = (iso) => (iso instanceof Date ? iso : new Date(iso));

/** "CST": the zone's short name at that instant (daylight time changes it). */
export function zoneLabel(iso, zone = homeZone()) {
  const parts = format(LABEL_LOCALE, zone, { timeZoneName: "short" }).formatToParts(instant(iso));
  const part = parts.find((p) => p.type === "timeZoneName");
  return part ? part.value : zone;
}

/** "23:00" at the zone's wall clock. */
export function timeText(iso, zone = homeZone()) {
  return format(dateLocale(), zone, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).format(instant(iso));
}

/** "Sat 5 Dec" for an instant in `zone`, or for a plain calendar date "2026-12-05". */
export function dayText(iso, zone = homeZone()) {
  const options = { weekday: "short", day: "numeric", month: "short" };
  if (typeof iso === "string" && /^\d{4}-\d{2}-\d{2}$/.test(iso)) {
    // A calendar date has no zone: read it at noon UTC, shown in UTC, so it is that day.
    return format(dateLocale(), "UTC", options).format(new Date(`${iso}T12:00:00Z`));
  }
  return format(dateLocale(), zone, options).format(instant(iso));
}

/** "Sat 5 Dec, 23:00 CST": the one way an instant is written. */
export function whenText(iso, zone = homeZone()) {
  return `${dayText(iso, zone)}, ${timeText(iso, zone)} ${zoneLabel(iso, zone)}`;
}

/** "Sat 5 Dec, 23:00–23:30 CST": a window (a visit, a slot). */
export function spanText(startIso, endIso, zone = homeZone()) {
  return `${dayText(startIso, zone)}, ${timeText(startIso, zone)}–${timeText(endIso, zone)} ${zoneLabel(startIso, zone)}`;
}
