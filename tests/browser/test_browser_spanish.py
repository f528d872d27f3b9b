"""The family app and the kiosk in Spanish (issue 19 item 9; docs/clients.md, "Languages"): a
browser whose language is Spanish (Playwright's locale es-ES: navigator.languages and
Accept-Language) gets every screen in Spanish, with no English string left.

The adversary: a newcomer who adds English words to a screen, either through the catalogue
without a Spanish entry or straight into the markup or a module. Every screen is walked (signed
out; the inbox; an open thread with its compose box and a photo; the photo viewer; Find a
person with a search's results; Visits with the booking dialog; Buy credits; Give credits with
an amount; the Statement; the email settings and password-reset pages; a video call, waiting
for the other side, and its end; on the kiosk the set-up,
the sign-in, the requests with the visits and a thread) and each visible text, each element's
whole text, each option and each aria-label, title, alt and placeholder is compared with the
English catalogue (static/i18n/en.json): a text that is an English message (its {placeholders}
matching anything) whose Spanish differs fails the test. A text with none of the catalogue's
words but plain English words in it ("the", "your", "credits"...) fails too: that is a string
added with no catalogue entry at all. The seeded people's names and message bodies are the only
English allowed. Each screen must also fit the phone's width with the longer Spanish words.
A refused sign-in (family and kiosk) is said in Spanish, from the error's stable code.
Then the switch in the header: English chosen, the page is in English and stays so after a
reload (the choice is remembered over the browser's language); on the kiosk, shared by many,
it holds until sign-out, and the next person gets the device's Spanish again.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from tests.browser.test_accessibility import PASSWORD, _seed
from tests.conftest import fresh_sqlite, test_settings
from tests.support.browser import KIOSK, PHONE, launch, require_chromium, shot
from tests.support.clock import browser_clock, scene_clock
from tests.support.helpers import Api
from tests.support.visit_pages import MEDIA, PIN

CATALOGUES = Path(__file__).resolve().parents[2] / "static" / "i18n"

# Every visible text of the page (and of an open modal dialog): each text node, each element's
# whole text (a sentence built of several nodes), every <option>, and the attributes a screen
# reader or a pointer shows. Visible: rendered (checkVisibility) and, for attributes, with a box.
TEXTS = """() => {
  const out = [];
  const seen = (el) => el.checkVisibility({visibilityProperty: true});
  const inline = (el) => el.tagName === 'BR' || getComputedStyle(el).display.startsWith('inline');
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (n.parentElement && seen(n.parentElement) && n.textContent.trim()) out.push(n.textContent);
  }
  for (const el of document.body.querySelectorAll('*')) {
    if (el.tagName === 'OPTION') out.push(el.textContent);
    if (!seen(el)) continue;
    // A sentence of text and inline elements (a paragraph around a figure, a tab's two parts).
    if (el.children.length && [...el.children].every(inline)) out.push(el.innerText);
    for (const a of ['aria-label', 'title', 'alt', 'placeholder']) {
      if (el.getAttribute(a)) out.push(el.getAttribute(a));
    }
  }
  out.push(document.title);
  return [...new Set(out.map((s) => s.replace(/\\s+/g, ' ').trim()).filter(Boolean))];
}"""

# Words that are English and never Spanish: a text holding one is English that escaped the
# catalogue. (Not "a", "no", "total", "email": those are Spanish too.)
ENGLISH_WORDS = {
    "the", "you", "your", "with", "and", "to", "of", "is", "are", "this", "for", "from",
    "credits", "credit", "visit", "visits", "message", "messages", "send", "buy", "give",
    "show", "book", "booked", "cancel", "join", "search", "find", "balance", "photo", "photos",
    "contact", "contacts", "connection", "password", "log", "sign", "statement", "when",
    "what", "free", "minutes", "download", "older", "yet", "none", "nothing",
}
# The seed's own words (names, message bodies, a file name): data, not the app's.
SEEDED = ["Hello from home", "Thank you, write soon", "About the parcel", "The garden", "Sam",
          "garden.png", "Alex Rivers", "Dana Rivers", "Test Facility", "Kinwire", "English",
          # the payment processor's name (a proper name), as the server gives it
          "Sandbox Payments"]


def english_only() -> list[tuple[str, re.Pattern[str]]]:
    """(id, a full-match pattern) of each English message form whose Spanish differs."""
    en = json.loads((CATALOGUES / "en.json").read_text())
    es = json.loads((CATALOGUES / "es.json").read_text())
    found = []
    for key, text in en.items():
        forms = text.values() if isinstance(text, dict) else [text]
        theirs = es.get(key, {})  # missing: the app shows the English (i18n.js falls back)
        spanish = set(theirs.values()) if isinstance(theirs, dict) else {theirs}
        for form in forms:
            if form in spanish:
                continue
            parts = re.split(r"\{\w+\}", form.strip())
            found.append((key, re.compile("(.+?)".join(re.escape(p) for p in parts), re.S)))
    return found


def english_in(texts: list[str], messages: list[tuple[str, re.Pattern[str]]]) -> list[str]:
    """Each text that is an English message or holds plain English words."""
    bad = []
    for text in texts:
        hit = next((key for key, pattern in messages if pattern.fullmatch(text)), None)
        if hit:
            bad.append(f"{text[:160]!r} is English ({hit})")
            continue
        rest = text
        for data in SEEDED:
            rest = rest.replace(data, " ")
        words = set(re.findall(r"[a-z]+", rest.lower()))
        if words & ENGLISH_WORDS:
            bad.append(f"{text[:160]!r} has English words {sorted(words & ENGLISH_WORDS)}")
    return bad


async def email_language(api: Api, family, want: str) -> str:
    """The family's email language once it is `want`, or as it stands after 5 s."""
    for _ in range(50):
        got = (await api.call("GET", "/notifications", family)).body["language"]
        if got == want:
            break
        await asyncio.sleep(0.1)
    return got


async def test_the_family_app_and_the_kiosk_in_spanish_have_no_english_left(
        sqlite_template: Path, tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=10_000)
    settings = test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path)
    clock = scene_clock()  # noon at the facility: today has blocks to book
    app = create_app(settings, run_migrations=False, clock=clock)
    messages = english_only()
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, \
            async_playwright() as pw:
        browser = await launch(pw, *MEDIA)  # a fake camera for the call screen
        api = Api(client)
        seed = await _seed(api)
        base = str(client.make_url("/")).rstrip("/")
        ctx = await browser.new_context(locale="es-ES", viewport=PHONE)
        await browser_clock(ctx, clock)
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        problems: list[str] = []
        walked: list[str] = []

        async def screen(name: str) -> None:
            texts = await page.evaluate(TEXTS)
            assert len(texts) > 5, (name, texts)
            walked.append(name)
            problems.extend(f"{name}: {p}" for p in english_in(texts, messages))
            # Longer Spanish words still fit a phone (test_accessibility.py checks English).
            wide = await page.evaluate("document.documentElement.scrollWidth - innerWidth")
            if wide > 0:
                problems.append(f"{name}: {wide} px wider than the screen")

        try:
            await page.goto(base + "/")
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-out")
            await expect(page.locator("html")).to_have_attribute("lang", "es")
            await expect(page.get_by_role("heading", name="Iniciar sesión")).to_be_visible()
            await screen("signed out")

            # A refusal is said in Spanish from its stable code (the server's message is English).
            await page.locator("#login-email").fill(seed["email"])
            await page.locator("#login-password").fill("not the password")
            await page.locator("#login-form button[type=submit]").click()
            await expect(page.locator("#login-notice")).to_have_text(
                "Los datos para iniciar sesión no son correctos.")
            await page.locator("#login-password").fill(PASSWORD)
            await page.locator("#login-form button[type=submit]").click()
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")
            await expect(page.locator("html")).to_have_attribute("data-socket", "online")
            await expect(page.locator("#balance")).to_contain_text("créditos")
            await screen("inbox")
            # The app tells the server (once signed in), so that the emails are Spanish too.
            assert await email_language(api, seed["family"], "es") == "es"

            await page.locator("#threads button").first.click()
            pay = page.get_by_role("button", name="Pagar 50 créditos para abrirlo")
            await expect(pay).to_be_visible()
            await page.locator("#compose-body").fill("Hola")
            await expect(page.locator("#send")).to_contain_text("Enviar")
            await screen("thread")
            await page.locator("a.photo").first.click()
            await expect(page.locator("#photo-viewer")).to_be_visible()
            await screen("photo viewer")
            await page.locator("#photo-viewer-close").click()

            await page.locator("#tab-find").click()
            await page.locator("#find-q").fill("Dana")
            await page.locator("#find-form button[type=submit]").click()
            await expect(page.locator("#find-results li").first).to_be_visible()
            await screen("find a person")

            await page.locator("#tab-visits").click()
            await expect(page.locator("#visit-list li").first).to_be_visible()
            slot = page.locator("#slots button.slot:not([disabled])").first
            await expect(slot).to_be_visible()
            await screen("visits")
            await slot.click()
            await expect(page.locator("#book-dialog")).to_be_visible()
            await screen("booking dialog")
            await page.locator("#book-dialog-back").click()

            await page.locator("#tab-credits").click()
            await expect(page.locator("#pay")).to_contain_text("Continuar para pagar")
            await screen("buy credits")

            await page.locator("#tab-gift").click()
            await page.locator("#gift-credits").fill("10")
            await expect(page.locator("#gift-send")).to_have_text("Regalar 10 créditos")
            await screen("give credits")

            await page.locator("#tab-statement").click()
            await expect(page.locator("#statement-rows tr").first).to_be_visible()
            await screen("statement")
            await shot(page, "family-es")

            # The pages beside the app: email choices (signed in) and the password reset.
            await page.goto(base + "/settings")
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")
            await expect(page.locator("#prefs-kinds input").first).to_be_visible()
            await screen("email settings")
            await page.goto(base + "/reset")
            await expect(page.locator("#forgot-form")).to_be_visible()
            await screen("forgot password")
            await page.goto(base + "/")
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")

            # The video call: the family joins the block under way (booked now); the person
            # is not there yet. Then the family hangs up: the ended screen.
            r = await api.call("GET", f"/facilities/{seed['facility_id']}/slots", seed["family"])
            con = (await api.call("GET", "/connections", seed["family"])).body["connections"][0]
            now = r.body["slots"][0]["start"]
            r = await api.call("POST", "/visits", seed["family"],
                               json={"connection_id": con["id"], "start": now})
            assert r.status == 201, r.body
            await page.locator("#tab-visits").click()
            await page.locator(f"[data-visit='{r.body['visit']['id']}'] button.primary").click()
            await expect(page.locator("#visit-status")).to_have_text(
                "Esperando a que Dana Rivers entre…")
            await expect(page.locator("#visit-link-level")).to_be_visible()
            await screen("video call")
            await page.locator("#visit-hangup").click()
            await expect(page.locator("#visit-ended")).to_have_text(
                "Visita terminada: usted colgó.")
            await screen("call ended")
            await page.locator("#visit-back").click()
            await expect(page.locator("#app")).to_be_visible()

            # The switch: English, remembered over the browser's Spanish.
            await page.locator("#language").select_option("en")
            await expect(page.locator("html")).to_have_attribute("lang", "en")
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")
            await expect(page.get_by_role("tab", name="Messages")).to_be_visible()
            await page.reload()
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")
            await expect(page.locator("#balance")).to_contain_text("credits")
            await expect(page.locator("#language")).to_have_value("en")
            assert await email_language(api, seed["family"], "en") == "en"
            await ctx.close()

            # The kiosk, on a device whose browser is in Spanish: set-up, sign-in, the
            # requests, a thread with its photo, the visits.
            ctx = await browser.new_context(locale="es-ES", viewport=KIOSK)
            await browser_clock(ctx, clock)
            page = await ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(base + "/static/kiosk.html")
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-out")
            await expect(page.locator("#device")).to_be_visible()
            await screen("kiosk set-up")
            await page.locator("#device-facility").fill(seed["facility_id"])
            await page.locator("#device-token").fill(seed["device"])
            await page.locator("#device-form button[type=submit]").click()
            await expect(page.locator("#login-number")).to_be_visible()
            await screen("kiosk sign in")
            await page.locator("#login-number").fill(seed["number"])
            await page.locator("#login-pin").fill("0000")
            await page.locator("#login-form button[type=submit]").click()
            await expect(page.locator("#login-notice")).to_have_text(
                "Los datos para iniciar sesión no son correctos.")
            await page.locator("#login-pin").fill(PIN)
            await page.locator("#login-form button[type=submit]").click()
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")
            await expect(page.locator("html")).to_have_attribute("data-socket", "online")
            await expect(page.get_by_role("button", name="Aprobar a Sam")).to_be_visible()
            await expect(page.locator("#kiosk-visits li").first).to_be_visible()
            await screen("kiosk requests and visits")
            await page.locator("#threads button", has_text="Alex Rivers").click()
            await page.locator("#compose-body").fill("Hola")
            await expect(page.locator("#send")).to_contain_text("Enviar")
            await screen("kiosk thread")
            # A shared kiosk: one person's English is not the next one's. Chosen, it holds
            # until sign-out; after it the device's Spanish is back.
            await page.locator("#language").select_option("en")
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-in")
            await expect(page.locator("#logout")).to_have_text("Log out")
            await page.locator("#logout").click()
            await expect(page.locator("body")).to_have_attribute("data-ready", "signed-out")
            await expect(page.locator("html")).to_have_attribute("lang", "es")
            await expect(page.locator("#login-h")).to_have_text("Iniciar sesión")
        finally:
            await ctx.close()
            await browser.close()
    assert problems == [], "\n".join(problems)
    assert errors == [], errors
    assert len(walked) == 18, walked
