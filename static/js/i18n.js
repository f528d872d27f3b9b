// The apps' words in the reader's language (docs/clients.md, "Languages"): one catalogue per
// language, static/i18n/<lang>.json, keyed by stable message ids. A message is a string with
// {name} placeholders, or its plural forms by Intl.PluralRules category ({"one": ..., "other":
// ...}, chosen by the value `n`). The language is the reader's saved choice, else the first of
// the browser's languages that has a catalogue, else English. A page awaits `loadLanguage()`
// before it draws anything, so t() is synchronous everywhere after.

/** The languages with a catalogue, each named in its own language (the switch's labels). */
export const LANGUAGES = { en: "English", es: "Español" };
const FALLBACK = "en";
const SAVED = "kinwire.lang"; // localStorage key of the reader's choice

let lang = FALLBACK;
let messages = {}; // the chosen language's catalogue
let english = {}; // the fallback for an id the chosen catalogue lacks (never shown in a test)
let plurals = new Intl.PluralRules(FALLBACK);

/** The saved choice, else the browser's first language with a catalogue, else English. */
export function chosenLanguage() {
  let saved = null;
  try { saved = localStorage.getItem(SAVED); } catch { /* storage off: the browser's choice */ }
  if (saved && LANGUAGES[saved]) return saved;
  for (const tag of navigator.languages || [navigator.language || ""]) {
    const base = String(tag).toLowerCase().split("-")[0];
    if (LANGUAGES[base]) return base;
  }
  return FALLBACK;
}

/** The language in use ("en", "es"). */
export function language() {
  return lang;
}

/** The locale dates and times are written in: day-month order and a 24-hour clock in English
 * (en-GB, as the apps always did), the reader's Spanish otherwise. */
export function dateLocale() {
  return lang === "en" ? "en-GB" : lang;
}

async function catalogue(code) {
  const r = await fetch(`/static/i18n/${code}.json`, { credentials: "same-origin" });
  if (!r.ok) throw new Error(`catalogue ${code}: ${r.status}`);
  return r.json();
}

/** Load the catalogues, set <html lang> and translate the page's marked markup. */
export async function loadLanguage(code = chosenLanguage()) {
  lang = LANGUAGES[code] ? code : FALLBACK;
  try {
    english = await catalogue(FALLBACK);
    messages = lang === FALLBACK ? english : await catalogue(lang);
  } catch {
    // No catalogue (offline, a bad deploy): English from the markup, ids from t().
    lang = FALLBACK;
  }
  plurals = new Intl.PluralRules(lang);
  document.documentElement.lang = lang;
  apply(document);
  return lang;
}

/** Remember the reader's choice and draw the page again in it. */
export function switchLanguage(code) {
  try { localStorage.setItem(SAVED, code); } catch { /* then only for this page */ }
  location.reload();
}

/** Forget the saved choice (a shared kiosk, at sign-out): the browser's language again. */
export function forgetLanguage() {
  try { localStorage.removeItem(SAVED); } catch { /* nothing was saved */ }
}

/** Whether the catalogue has this id. */
export function has(id) {
  return id in messages || id in english;
}

/** The message `id` with its {placeholders} filled from `values`; a plural message picks its
 * form by `values.n`. */
export function t(id, values = {}) {
  let m = id in messages ? messages[id] : english[id];
  if (m === undefined) return id;
  if (typeof m === "object") m = m[plurals.select(Number(values.n))] ?? m.other;
  return m.replace(/\{(\w+)\}/g, (all, k) => (k in values ? String(values[k]) : all));
}

/** The message `id` as text and elements, for a sentence around live elements: each
 * {placeholder} whose value is a Node is that node, the rest is text. */
export function parts(id, values = {}) {
  const text = { ...values };
  for (const k of Object.keys(text)) if (text[k] instanceof Node) text[k] = `\u0000${k}\u0000`;
  return t(id, text).split("\u0000").map((piece, i) => (i % 2 ? values[piece] : piece));
}

/** What to tell the reader about a refusal ({code, message}): in English the server's own
 * message (the most precise words); in another language the catalogue's words for its stable
 * code (error.<code>) when it has them, else the server's message. */
export function errorText({ code, message }) {
  if (lang === FALLBACK && message) return message;
  if (code && inChosen(`error.${code}`)) return t(`error.${code}`);
  return message || t("error.internal_error");
}

// Only the chosen catalogue: an English fallback for an error would hide the server's words.
const inChosen = (id) => id in messages;

/**
 * Translate marked markup under `root`: data-i18n="id" sets the text; data-i18n-attr=
 * "aria-label:id;placeholder:id2" sets attributes. An element whose text has markup of its own
 * marks its parts (spans) instead.
 */
export function apply(root) {
  // An id no catalogue has (none could be loaded) leaves the markup's English as it is.
  for (const el of root.querySelectorAll("[data-i18n]")) {
    if (has(el.dataset.i18n)) el.textContent = t(el.dataset.i18n);
  }
  for (const el of root.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of el.dataset.i18nAttr.split(";")) {
      const [attr, id] = pair.split(":").map((s) => s.trim());
      if (attr && has(id)) el.setAttribute(attr, t(id));
    }
  }
}

/** The language switch for a page's header: a labelled select, choosing reloads in that
 * language. */
export function languageSwitch() {
  const sel = document.createElement("select");
  sel.id = "language";
  sel.className = "language";
  sel.setAttribute("aria-label", t("language.label"));
  for (const [code, name] of Object.entries(LANGUAGES)) {
    const o = document.createElement("option");
    o.value = code;
    o.lang = code;
    o.textContent = name;
    sel.append(o);
  }
  sel.value = lang;
  sel.addEventListener("change", () => switchLanguage(sel.value));
  return sel;
}
