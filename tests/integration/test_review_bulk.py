"""The review queue's filters and decisions on a selection (POST /review/decisions), on both
databases.

Adversaries: two officers deciding the same selection at the same moment (one approving, one
rejecting), a client that retries the same request, another facility's officer naming our
messages. Each message must be decided exactly once, audited once and refunded at most once,
and the ledger must still balance.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import FormData
from sqlalchemy import select

from billing import ledger
from billing.tables import ledger_transfers
from tests.conftest import app_client
from tests.integration.test_photos import png
from tests.support.cast import balance, cast, send
from tests.support.clock import Clock
from tests.support.helpers import Api, Who

N = 8


async def decide(api: Api, who: Who, decision: str, ids: list[str], reason: str = ""):
    body = {"decision": decision, "message_ids": ids, **({"reason": reason} if reason else {})}
    return await api.call("POST", "/review/decisions", who, json=body)


async def held_messages(api: Api, family: Who, person: Who, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = await send(api, family, person, f"note {i}")
        assert r.status == 201 and r.body["message"]["status"] == "held", r.body
        ids.append(r.body["message"]["id"])
    return ids


async def test_two_officers_deciding_the_same_selection_at_once_decide_each_once(
        api: Api) -> None:
    c = await cast(api, credits=1000, review_mode="hold")
    second = await api.staff(c.admin, c.facility)
    ids = await held_messages(api, c.family, c.person, N)
    assert await balance(api, c.family) == 1000 - 50 * N

    # One officer rejects the selection while another approves it in the other order, and
    # the first officer's client sends its request twice (a retry racing the original).
    replies = await asyncio.gather(
        decide(api, c.staff, "reject", ids, "not allowed"),
        decide(api, second, "approve", ids[::-1]),
        decide(api, c.staff, "reject", ids, "not allowed"))
    assert all(r.status == 200 for r in replies), replies
    outcomes: dict[str, list[str]] = {i: [] for i in ids}
    for r in replies:
        assert sorted(x["id"] for x in r.body["results"]) == sorted(ids)
        for x in r.body["results"]:
            outcomes[x["id"]].append(x["outcome"])
    for message_id, seen in outcomes.items():
        decided = [o for o in seen if o != "already_reviewed"]
        assert len(decided) == 1 and decided[0] in ("delivered", "rejected"), (message_id, seen)
    rejected = {i for i, seen in outcomes.items() if "rejected" in seen}

    # Each message: one audit entry, its stored status the winner's, at most one refund.
    entries = (await api.call("GET", "/audit?limit=100", c.staff)).body["entries"]
    decisions = Counter(e["target"] for e in entries
                        if e["action"] in ("message.approve", "message.reject"))
    assert decisions == Counter({i: 1 for i in ids})
    async with api.ctx.store.read() as conn:
        refunds = Counter(r.ref for r in await conn.execute(select(ledger_transfers).where(
            ledger_transfers.c.kind == "refund")))
        assert await ledger.check_invariants(conn) == []
    assert refunds == Counter({i: 1 for i in rejected})
    assert await balance(api, c.family) == 1000 - 50 * N + 50 * len(rejected)

    # The same request once more: nothing is decided or refunded again.
    again = await decide(api, c.staff, "reject", ids, "not allowed")
    assert {x["outcome"] for x in again.body["results"]} == {"already_reviewed"}
    assert await balance(api, c.family) == 1000 - 50 * N + 50 * len(rejected)


async def test_a_selection_is_checked_and_scoped_to_the_facility(api: Api) -> None:
    c = await cast(api, credits=1000, review_mode="hold")
    ids = await held_messages(api, c.family, c.person, 2)
    elsewhere = await api.staff(c.admin, await api.facility(c.admin))

    r = await decide(api, elsewhere, "approve", ids)
    assert r.status == 200
    assert [x["outcome"] for x in r.body["results"]] == ["not_found", "not_found"]
    queue = (await api.call("GET", "/review", c.staff)).body["messages"]
    assert [m["id"] for m in queue] == ids, "another facility's officer decided nothing"

    assert (await decide(api, c.staff, "reject", ids)).code == "invalid_input"  # no reason
    assert (await decide(api, c.staff, "reject", ids, "   ")).code == "invalid_input"
    too_many = [f"msg_{i}" for i in range(101)]
    assert (await decide(api, c.staff, "approve", too_many)).status == 422
    assert (await decide(api, c.staff, "approve", [])).status == 422

    # A message named twice in one selection is decided once.
    r = await decide(api, c.staff, "approve", [ids[0], ids[0], ids[1]])
    assert [(x["id"], x["outcome"]) for x in r.body["results"]] == [
        (ids[0], "delivered"), (ids[1], "delivered")]


async def test_the_queue_filters_by_type_and_age(db_url: str, tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 12, 5, 18, 0, tzinfo=UTC))
    async with app_client(db_url, tmp_path, clock=clock) as client:
        api = Api(client)
        c = await cast(api, credits=2000, keywords=["contraband"])  # instant; photos held
        form = FormData()
        form.add_field("file", png(), filename="p.png", content_type="image/png")
        photo = (await api.call("POST", "/photos", c.family, data=form)).body["photo_id"]
        old_photo = (await send(api, c.family, c.person, "a picture",
                                photo_ids=[photo])).body["message"]["id"]
        clock.advance(hours=2)
        word = (await send(api, c.family, c.person, "the contraband list")).body["message"]["id"]
        clock.advance(minutes=30)

        async def queue(query: str = "") -> list[str]:
            r = await api.call("GET", f"/review{query}", c.staff)
            assert r.status == 200, r.body
            return [m["id"] for m in r.body["messages"]]

        assert await queue() == [old_photo, word]
        assert await queue("?kind=photos") == [old_photo]
        assert await queue("?kind=keyword") == [word]
        assert await queue("?kind=text") == [word]
        assert await queue("?older_than_minutes=60") == [old_photo]
        assert await queue("?older_than_minutes=30") == [old_photo, word]
        assert await queue("?older_than_minutes=200") == []
        assert (await api.call("GET", "/review?kind=video", c.staff)).code == "invalid_input"
        assert (await api.call("GET", "/review?older_than_minutes=-1", c.staff)).status == 422
