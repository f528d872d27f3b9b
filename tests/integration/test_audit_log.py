"""The audit log as officers read it (issue 19, item 7), on both databases: sentences with
names, filters by actor, action and the facility's days, the CSV export with the same readers,
and facility settings refused in plain words per field.

Adversaries: an officer of another facility asking for our log or its CSV; text typed by
people that a spreadsheet would run as a formula; a range too wide to export.
"""

from __future__ import annotations

import csv
import io
import secrets
from datetime import UTC, datetime, timedelta

from server.schema import connections, visits
from store.ids import new_id
from tests.conftest import app_client
from tests.support.clock import Clock
from tests.support.helpers import Api, Who

# 23:30 on Friday 4 December at the facility (America/Chicago, UTC-6): the facility's day and
# UTC's differ, so a date filter in the wrong zone shows.
START = datetime(2026, 12, 5, 5, 30, tzinfo=UTC)


async def named_family(api: Api, name: str) -> Who:
    email = f"fam-{secrets.token_hex(4)}@example.test"
    r = await api.call("POST", "/auth/signup",
                       json={"email": email, "password": "correct horse", "name": name})
    assert r.status == 201, r.body
    r = await api.call("POST", "/auth/login", json={"email": email, "password": "correct horse"})
    return Who(r.body["token"], r.body["account"])


async def named_staff(api: Api, admin: Who, facility_id: str, name: str) -> Who:
    email = f"off-{secrets.token_hex(4)}@example.test"
    r = await api.call("POST", f"/facilities/{facility_id}/staff", admin,
                       json={"email": email, "password": "staff password", "name": name})
    assert r.status == 201, r.body
    r = await api.call("POST", "/auth/login", json={"email": email, "password": "staff password"})
    return Who(r.body["token"], r.body["account"])


async def visit_in_call(api: Api, family: Who, person: Who, facility_id: str) -> str:
    """A visit whose window is open and a party joined (joining is
    tests/integration/test_visit_calls.py's)."""
    now, visit_id = api.ctx.clock(), new_id("vis")
    async with api.ctx.store.write() as conn:
        con = (await conn.execute(connections.select().where(
            connections.c.family_id == family.id))).first()
        await conn.execute(visits.insert().values(
            id=visit_id, facility_id=facility_id, connection_id=con.id, family_id=family.id,
            person_id=person.id, booked_by=family.id, start_at=now - timedelta(minutes=1),
            end_at=now + timedelta(minutes=29), blocks=1, minute_price=50, media="direct",
            record=True, status="open", created_at=now, updated_at=now))
    return visit_id


async def test_the_log_reads_as_sentences_filters_and_exports(db_url, tmp_path) -> None:
    clock = Clock(START)
    async with app_client(db_url, tmp_path, clock=clock, export_rows_max=7) as client:
        api = Api(client)
        admin = await api.admin()
        facility = await api.facility(admin, review_mode="hold")
        ana = await named_staff(api, admin, facility, "Ana Diaz")
        ben = await named_staff(api, admin, facility, "Ben Ode")
        number, device = await api.kiosk_person(ana, facility, "2468", "Dana Rivers")
        person = await api.kiosk_login(facility, number, "2468", device)
        alex = await named_family(api, "Alex Rivers")
        await api.connect(alex, person)
        assert (await api.buy(alex, 500)).status == 201

        # Friday 23:30 local: Ana ends Alex's visit; after midnight Ben rejects a message.
        visit_id = await visit_in_call(api, alex, person, facility)
        r = await api.call("POST", f"/visits/{visit_id}/end", ana,
                           json={"reason": "threatening language"})
        assert r.status == 200, r.body
        clock.advance(hours=1)  # 00:30 on Saturday 5 December at the facility
        r = await api.call("POST", "/messages", alex, json={"to": person.id, "body": "hi"},
                           key="m1")
        message_id = r.body["message"]["id"]
        r = await api.call("POST", f"/review/{message_id}/reject", ben, json={"reason": "=1+1"})
        assert r.status == 200, r.body

        entries = (await api.call("GET", "/audit", ana)).body
        sentences = [e["sentence"] for e in entries["entries"]]
        assert sentences[0] == ("Officer Ben Ode rejected a message from Alex Rivers to "
                                "Dana Rivers: '=1+1'")
        assert sentences[1] == ("Officer Ana Diaz ended the visit of Alex Rivers and "
                                "Dana Rivers: 'threatening language'")
        assert "Officer Ana Diaz added the resident Dana Rivers" in sentences[3]
        assert {a["name"] for a in entries["actors"]} >= {"Ana Diaz", "Ben Ode", "Admin"}
        assert entries["actions"]["visit.end"] == "Ended a visit"

        async def actions(who: Who, query: str) -> list[str]:
            r = await api.call("GET", f"/audit{query}", who)
            assert r.status == 200, r.body
            return [e["action"] for e in r.body["entries"]]

        assert await actions(ana, f"?actor_id={ben.id}") == ["message.reject"]
        assert await actions(ana, "?action=visit.end") == ["visit.end"]
        # Days are the facility's: the end was on Friday 4th there, the rejection on the 5th.
        assert await actions(ana, "?from=2026-12-05&to=2026-12-05") == ["message.reject"]
        assert "visit.end" in await actions(ana, "?from=2026-12-04&to=2026-12-04")
        assert "message.reject" not in await actions(ana, "?to=2026-12-04")
        assert (await api.call("GET", "/audit?from=2026-12-06&to=2026-12-05", ana)).status == 422
        assert (await api.call("GET", "/audit?from=yesterday", ana)).status == 422

        # The CSV: the same sentences, local times, a formula-like cell made inert.
        r = await api.call("GET", "/audit/export?from=2026-12-04&to=2026-12-05", ana)
        assert r.status == 200
        rows = list(csv.DictReader(io.StringIO(r.body)))
        assert [row["what happened"] for row in rows[:2]] == sentences[:2]
        assert rows[0]["time"] == "2026-12-05T00:30:00-06:00"
        assert rows[1]["details"] == '{"reason": "threatening language"}'
        async with client.get("/api/v1/audit/export",
                              headers={"Authorization": f"Bearer {ana.token}"}) as resp:
            assert resp.headers["Content-Type"].startswith("text/csv")
            assert "attachment" in resp.headers["Content-Disposition"]
        r = await api.call("GET", f"/audit/export?actor_id={ben.id}", ana)
        assert list(csv.reader(io.StringIO(r.body)))[1][4] == (
            "Officer Ben Ode rejected a message from Alex Rivers to Dana Rivers: '=1+1'")

        # Bounded: 7 entries export (export_rows_max); an 8th matching one refuses the range,
        # and a narrower filter exports again.
        r = await api.call("POST", f"/facilities/{facility}/devices", ana, json={"label": "t2"})
        assert r.status == 201
        r = await api.call("GET", "/audit/export", ana)
        assert r.status == 422 and r.code == "too_many_rows", r.body
        assert (await api.call("GET", "/audit/export?from=2026-12-05", ana)).status == 200
        # Another facility's officer reads only their own (empty) log, CSV too.
        theirs = await api.facility(admin)
        other = await api.staff(admin, theirs)
        seen = (await api.call("GET", f"/audit?facility_id={facility}", other)).body["entries"]
        assert seen and {e["facility_id"] for e in seen} == {theirs}
        r = await api.call("GET", f"/audit/export?facility_id={facility}", other)
        assert r.status == 200 and "Ana Diaz" not in r.body and "Officer" not in r.body
        assert (await api.call("GET", "/audit/export", alex)).status == 403
        client.session.cookie_jar.clear()  # the last login's cookie
        assert (await api.call("GET", "/audit/export")).status == 401


async def test_a_refused_setting_is_explained_in_plain_words(db_url, tmp_path) -> None:
    async with app_client(db_url, tmp_path) as client:
        api = Api(client)
        admin = await api.admin()
        facility = await api.facility(admin)

        async def refused(settings: dict) -> dict:
            r = await api.call("PATCH", f"/facilities/{facility}", admin,
                               json={"settings": settings})
            assert r.status == 422 and r.code == "invalid_settings", r.body
            return r.body["error"]

        e = await refused({"visit_hours": {"start": "22:00", "end": "08:00"}})
        assert e["message"] == "Visiting hours must start before they end."
        assert e["details"]["fields"] == [{"field": "visit_hours", "problem": e["message"]}]
        e = await refused({"kiosks": 0, "prices": {"photo": -5}})
        assert [(f["field"], f["problem"]) for f in e["details"]["fields"]] == [
            ("kiosks", "Kiosks must be at least 1."),
            ("prices.photo", "The photo price must be at least 0.")]
        assert (await refused({"visit_block_minutes": 20}))["message"] == \
            "The visit block must be one of 15 or 30."
        assert (await refused({"visit_hours": {"start": "25:00"}}))["message"] == \
            "Visiting from must be a time of day such as 08:00."
        for e in [await refused({"kiosks": "four"}), await refused({"nonsense": 1})]:
            assert "Value error" not in e["message"] and "settings." not in e["message"], e


def test_a_cell_a_spreadsheet_would_run_is_made_inert() -> None:
    row = {"at": START.isoformat(), "actor_name": "=HYPERLINK(\"http://x\")",
           "actor_role": "staff", "action": "x", "sentence": "+1", "target": "@a",
           "details": {}}
    from zoneinfo import ZoneInfo

    from server.audit_text import to_csv
    cells = list(csv.reader(io.StringIO(to_csv([row], ZoneInfo("America/Chicago")))))[1]
    assert cells[1:3] == ["'=HYPERLINK(\"http://x\")", "staff"]
    assert cells[4:6] == ["'+1", "'@a"]
