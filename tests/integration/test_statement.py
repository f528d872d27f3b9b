"""The statement read model (issue 19, item 6), on both databases: one line per visit (its
minutes, credits and the person's name), purchases in dollars, a rejected message's refunds as
one line tied to it, paging that never splits or repeats a line, and CSV for a range of days.

Adversaries: transfers of different things interleaved in time (a message sent during a
visit); a page boundary falling inside a visit's minutes; a range too wide to export. The
ledger is read only: the test checks that reading writes nothing.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from sqlalchemy import func, select

from billing import ledger
from billing.ledger import SystemAccount
from billing.tables import ledger_transfers
from tests.conftest import app_client
from tests.integration.test_audit_log import named_family, visit_in_call
from tests.support.clock import Clock
from tests.support.helpers import Api

START = datetime(2026, 12, 5, 20, 0, tzinfo=UTC)  # 14:00 on Saturday 5 December in Chicago


async def minutes(api: Api, family_id: str, visit_id: str, numbers: range) -> None:
    """Minute debits as the meter writes them (the meter itself: tests/test_meter*.py)."""
    async with api.ctx.store.write() as conn:
        for n in numbers:
            await ledger.transfer(conn, key=f"visit:{visit_id}:{n}", debit=family_id,
                                  credit=SystemAccount.VISIT_REVENUE, amount=50,
                                  kind="visit_minute", ref=visit_id, at=api.ctx.clock())


async def test_one_line_per_visit_message_refund_and_purchase(db_url, tmp_path) -> None:
    clock = Clock(START)
    async with app_client(db_url, tmp_path, clock=clock, export_rows_max=4) as client:
        api = Api(client)
        admin = await api.admin()
        facility = await api.facility(admin, review_mode="hold")
        staff = await api.staff(admin, facility)
        number, device = await api.kiosk_person(staff, facility, "2468", "Dana Rivers")
        person = await api.kiosk_login(facility, number, "2468", device)
        alex = await named_family(api, "Alex Rivers")
        await api.connect(alex, person)
        assert (await api.buy(alex, 2000)).status == 201  # $20.00 + $1.50 fee

        clock.advance(minutes=5)
        visit_id = await visit_in_call(api, alex, person, facility)
        await minutes(api, alex.id, visit_id, range(1, 10))
        clock.advance(minutes=9)
        r = await api.call("POST", "/messages", alex, key="m1",  # sent during the visit
                           json={"to": person.id, "body": "see you"})
        message_id = r.body["message"]["id"]
        await minutes(api, alex.id, visit_id, range(10, 19))
        clock.advance(minutes=9)
        r = await api.call("POST", f"/review/{message_id}/reject", staff, json={"reason": "no"})
        assert r.status == 200
        clock.advance(days=1)
        r = await api.call("POST", "/gifts", alex, key="g1", json={"to": person.id, "credits": 100})
        assert r.status == 201, r.body

        async with api.ctx.store.read() as conn:
            transfers_before = (await conn.execute(
                select(func.count()).select_from(ledger_transfers))).scalar_one()

        r = await api.call("GET", "/statement", alex)
        assert r.status == 200, r.body
        lines = r.body["lines"]
        assert [(x["kind"], x["credits"]) for x in lines] == [
            ("gift", -100), ("refund", 50), ("visit", -900), ("message", -50),
            ("purchase", 2000)]
        gift, refund, visit, message, purchase = lines
        assert (gift["with"], gift["direction"]) == ("Dana Rivers", "to")
        assert refund["refunds"] == {"kind": "message", "id": message_id, "reason": "no"}
        assert (refund["with"], refund["direction"]) == ("Dana Rivers", "to")
        assert (visit["with"], visit["minutes"]) == ("Dana Rivers", 18)
        assert (message["with"], message["photos"]) == ("Dana Rivers", 0)
        assert {k: purchase[k] for k in ("price_cents", "fee_cents", "total_cents",
                                         "card_last4")} == {
            "price_cents": 2000, "fee_cents": 150, "total_cents": 2150, "card_last4": "4242"}
        assert r.body["balance"] == 2000 - 900 - 50 + 50 - 100

        # Two lines a page: every line once, none split, whatever falls on a boundary.
        paged, before = [], ""
        while True:
            page = (await api.call("GET", f"/statement?limit=2{before}", alex)).body
            paged += page["lines"]
            if page["next_before"] is None:
                break
            before = f"&before={page['next_before']}"
        assert paged == lines

        # Days in the family's zone: Saturday 5 December in Chicago holds all but the gift.
        day = "from=2026-12-05&to=2026-12-05&tz=America/Chicago"
        r = await api.call("GET", f"/statement?{day}", alex)
        assert [x["kind"] for x in r.body["lines"]] == ["refund", "visit", "message", "purchase"]
        r = await api.call("GET", f"/statement/export?{day}", alex)
        assert r.status == 200
        rows = list(csv.DictReader(io.StringIO(r.body)))
        assert rows[1]["what"] == "Video visit with Dana Rivers, 18 minutes"
        assert (rows[1]["credits"], rows[1]["minutes"]) == ("-900", "18")
        assert rows[0]["what"] == "Refund: message to Dana Rivers rejected by review"
        assert rows[3]["what"] == ("Bought credits: $20.00 + $1.50 fee = $21.50, "
                                   "visa ending 4242")
        assert (rows[3]["paid (USD)"], rows[3]["fee (USD)"]) == ("21.50", "1.50")
        assert rows[3]["time"] == "2026-12-05T14:00:00-06:00"
        assert (await api.call("GET", "/statement/export", alex)).code == "too_many_rows"
        for bad in ("from=5/12/2026", "tz=Mars/Olympus", "from=2026-12-06&to=2026-12-05"):
            assert (await api.call("GET", f"/statement?{bad}", alex)).status == 422, bad

        # The person's own statement: the gift in, from Alex (a new kiosk session: a day passed).
        person = await api.kiosk_login(facility, number, "2468", device)
        mine = (await api.call("GET", "/statement", person)).body["lines"]
        assert [(x["kind"], x["credits"], x["with"], x["direction"]) for x in mine] == [
            ("gift", 100, "Alex Rivers", "from")]

        async with api.ctx.store.read() as conn:
            assert (await conn.execute(select(func.count()).select_from(ledger_transfers))
                    ).scalar_one() == transfers_before, "reading the statement wrote nothing"
            assert await ledger.check_invariants(conn) == []
