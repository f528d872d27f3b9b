"""Constants with one source (issue 20, item 4): prices, end reasons and close codes.

Adversaries: a copy of a constant that drifts from its source (a page that shows a message
price the server no longer charges, a close code the page does not recognise and so retries
at once, an end reason the page cannot say), and a facility whose own prices differ from the
defaults (its prices, not the defaults, are what it charges).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from billing import meter
from server.gateway import client as ws_client
from tests.support.helpers import Api

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "static" / "js"
PRODUCT = ("server", "signalling", "billing", "store", "common")
# A price table in a page: a price name followed by a number ("message: 50").
PRICE_LITERAL = re.compile(r"\b(message|photo|visit_minute)\s*:\s*\d")


def price_tables(js: Path) -> list[str]:
    return [f"{path.name}:{n}" for path in sorted(js.rglob("*.js"))
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if PRICE_LITERAL.search(line)]


def test_no_page_holds_a_price_table(tmp_path: Path) -> None:
    assert price_tables(JS) == [], "prices come from GET /pricing and GET /facilities"
    (tmp_path / "page.js").write_text(
        "const DEFAULT_PRICES = { message: 50, photo: 100, visit_minute: 50 };\n")
    assert price_tables(tmp_path) == ["page.js:1"], "the scan finds the old copy"


async def test_pricing_serves_the_prices_a_facility_has_unless_it_sets_its_own(api: Api) -> None:
    admin = await api.admin()
    plain = await api.facility(admin)
    dear = await api.facility(admin, prices={"message": 75, "photo": 120, "visit_minute": 60})
    defaults = (await api.call("GET", "/pricing")).body["prices"]  # anonymous, like the pages
    shown = {f: (await api.call("GET", f"/facilities/{f}", admin)).body["facility"]["settings"]
             ["prices"] for f in (plain, dear)}
    assert defaults == shown[plain] == {"message": 50, "photo": 100, "visit_minute": 50}
    assert shown[dear] == {"message": 75, "photo": 120, "visit_minute": 60}


def assignments(name: str) -> list[str]:
    """Where product code assigns `name` at module level."""
    found = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AnnAssign) else []
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    found.append(str(path.relative_to(ROOT)))
    return found


def test_end_reasons_are_defined_once_and_each_is_said_on_the_page() -> None:
    assert assignments("END_REASONS") == ["billing/meter.py"]
    said = set(re.findall(r'case "(\w+)":', (JS / "visit" / "screen.js").read_text()))
    assert set(meter.END_REASONS) - said == set(), \
        "visit/screen.js endedText has no words for these"


def page_close_codes() -> dict[str, int]:
    source = (JS / "socket.js").read_text()
    table = re.search(r"const CLOSE = Object\.freeze\(\{(.*?)\}\)", source, re.S)
    assert table, "socket.js names its close codes in one CLOSE table"
    codes = dict((k, int(v)) for k, v in re.findall(r"(\w+):\s*(\d+)", table.group(1)))
    rest = source[:table.start()] + source[table.end():]
    code = [line.split("//")[0] for line in rest.splitlines()
            if not line.strip().startswith(("*", "/*", "//"))]  # prose may name the numbers
    bare = [line.strip() for line in code if re.search(r"\b4\d{3}\b|close\(\s*\d", line)]
    assert bare == [], "a close code outside the CLOSE table"
    return codes


def test_the_page_names_the_servers_close_codes_as_the_server_does() -> None:
    server = {name: getattr(ws_client, name) for name in
              ("NORMAL", "UNAUTHORISED", "TOO_SLOW", "REVOKED", "TOO_MANY_CONNECTIONS")}
    page = page_close_codes()
    assert {k: page.get(k) for k in server} == server
    assert len(set(page.values())) == len(page), "one number, one meaning"
    assert ws_client.TOO_SLOW != ws_client.TOO_MANY_CONNECTIONS
