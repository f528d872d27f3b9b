"""One error model (common/errors.py): every code the code base refuses with has its HTTP status
in the edge's one table (server/http/errors.py).

The adversary: a developer who adds a refusal with a new code in a domain module and never
opens the HTTP edge; the client would get a 500 `internal_error` instead of the code. The
codes are read from the source (every `Refused(...)`-family call with a literal code, and the
tables of codes raised through a variable), so a new one is seen without anyone listing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from billing.gateway import DECLINED, CardError
from common.errors import Refused
from server.attempts import MESSAGES
from server.http.errors import STATUS, status_of
from signalling.visits import VisitError

ROOT = Path(__file__).resolve().parents[2]
RAISERS = {"Refused", "VisitError", "LedgerError", "CardError", "PricingError"}
# signalling/visit_client.py is a client of the API: its VisitError is its own, not a refusal.
CLIENTS = {ROOT / "signalling" / "visit_client.py"}


def raised_codes() -> dict[str, str]:
    """code -> where it is first raised, for every literal code in product code."""
    found: dict[str, str] = {}
    for package in ("common", "store", "billing", "signalling", "server"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path in CLIENTS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                first = node.args[0]
                if name in RAISERS and isinstance(first, ast.Constant):
                    found.setdefault(first.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_raised_code_has_an_http_status() -> None:
    codes = raised_codes()
    assert len(codes) > 40  # the walk read the code base, not nothing
    codes |= {code: "server/attempts.py MESSAGES" for code in MESSAGES}
    codes |= {code: "billing/gateway.py DECLINED" for code, _ in DECLINED.values()}
    missing = {code: where for code, where in codes.items() if code not in STATUS}
    assert missing == {}, f"codes with no HTTP status in server/http/errors.py: {missing}"


def test_statuses_follow_the_code_and_declines_are_payment_required() -> None:
    assert status_of(VisitError("not_found", "The visit was not found.")) == 404
    assert status_of(Refused("insufficient_credits", "")) == 402
    # The same code, two statuses: our own expiry check vs the issuer's decline.
    assert status_of(CardError("card_expired", "The card has expired.")) == 422
    assert status_of(CardError("card_expired", "The card has expired.", declined=True)) == 402


def test_a_refusal_carries_no_http_status() -> None:
    """The domain's errors say what happened, not how a transport shows it."""
    refusal = VisitError("not_in_call", "The visit is ended.")
    assert not hasattr(refusal, "status")
    assert refusal.body() == {"error": {"code": "not_in_call", "message": "The visit is ended."}}
