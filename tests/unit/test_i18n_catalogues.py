"""The apps' message catalogues (static/i18n/*.json, static/js/i18n.js; docs/clients.md,
"Languages") agree with each other and with the code that uses them.

The adversaries: a newcomer who adds a message to one catalogue and not the other (the
Spanish reader would get English), who translates "{n} credits" as "{count} créditos" (the
reader would see the raw placeholder), or who calls t("new.id") or marks data-i18n="new.id"
with no catalogue entry at all (the reader would see the id); and a catalogue that keeps words
for an error code the server no longer has.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from server.http.errors import STATUS

ROOT = Path(__file__).resolve().parents[2]
CATALOGUES = ROOT / "static" / "i18n"
PLURAL_FORMS = {"zero", "one", "two", "few", "many", "other"}  # Intl.PluralRules' categories
# Errors the apps make themselves (static/js/api.js), not the server.
CLIENT_CODES = {"network", "internal_error"}


def load(lang: str) -> dict:
    return json.loads((CATALOGUES / f"{lang}.json").read_text())


def forms(message: str | dict) -> list[str]:
    return list(message.values()) if isinstance(message, dict) else [message]


def placeholders(message: str | dict) -> set[str]:
    """The {names} of a message, over all its plural forms (a form may leave one out: Spanish
    "El próximo día" for one day)."""
    return {name for form in forms(message) for name in re.findall(r"\{(\w+)\}", form)}


def test_every_language_has_the_same_ids_and_placeholders() -> None:
    en = load("en")
    langs = sorted(p.stem for p in CATALOGUES.glob("*.json"))
    assert "en" in langs and "es" in langs, langs
    for lang in langs:
        other = load(lang)
        assert sorted(set(en) - set(other)) == [], f"{lang}.json lacks these"
        assert sorted(set(other) - set(en)) == [], f"{lang}.json has these en.json lacks"
        wrong = {k: (placeholders(en[k]), placeholders(other[k])) for k in en
                 if placeholders(en[k]) != placeholders(other[k])}
        assert wrong == {}, f"{lang}.json: placeholders differ from en.json"


def test_messages_are_strings_or_plural_forms() -> None:
    for path in sorted(CATALOGUES.glob("*.json")):
        for key, message in json.loads(path.read_text()).items():
            assert re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)+", key), (path.name, key)
            if isinstance(message, dict):
                assert "other" in message and set(message) <= PLURAL_FORMS, (path.name, key)
                # A plural message is chosen by {n} (i18n.js t()): some form must show it.
                assert "n" in placeholders(message) or path.stem != "en", (path.name, key)
            assert all(isinstance(f, str) and f.strip() for f in forms(message)), (path.name, key)


def used_ids() -> dict[str, str]:
    """id -> file, for every literal id the apps use: t("id"), parts("id"), data-i18n="id",
    data-i18n-attr="attr:id"."""
    found: dict[str, str] = {}
    patterns = [r'\bt\("([^"]+)"', r'\bparts\("([^"]+)"', r'data-i18n="([^"]+)"',
                r'data-i18n-attr="([^"]+)"']
    files = [*(ROOT / "static" / "js").rglob("*.js"), *(ROOT / "static").glob("*.html")]
    for path in files:
        if path.name == "i18n.js":  # its comments show the syntax with a made-up id
            continue
        text = path.read_text()
        for pattern in patterns:
            for match in re.findall(pattern, text):
                ids = [pair.split(":")[1] for pair in match.split(";")] if ":" in match else [match]
                for key in ids:
                    found.setdefault(key.strip(), str(path.relative_to(ROOT)))
    return found


def test_every_id_the_apps_use_is_in_the_catalogue() -> None:
    used = used_ids()
    assert len(used) > 150, len(used)  # the scan sees the apps' ids
    en = load("en")
    assert {k: f for k, f in used.items() if k not in en} == {}


def test_error_words_are_for_codes_the_server_has() -> None:
    codes = {k.removeprefix("error.") for k in load("en") if k.startswith("error.")}
    assert codes - set(STATUS) - CLIENT_CODES == set()
    # The refusals a family meets most have words of their own in every language.
    assert {"insufficient_credits", "invalid_credentials", "email_taken", "slot_taken",
            "card_declined", "not_connected"} <= codes
