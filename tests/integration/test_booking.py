"""Booking: the block grid (15 and 30 minutes, visiting hours, Chicago's clock changes), visit
now, and every way a booking or a cancellation is refused, each with its precise code.

The grid tests are pure (signalling/booking.py); the rest go through HTTP on both databases
with a settable clock. The scene starts on Monday 2 March 2026 at 09:10 in Chicago (CST,
UTC-6), ten minutes into the 09:00 block of the default 08:00-21:00 hours.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from server import events
from server.facilities import FacilitySettings
from server.schema import visits
from signalling.booking import Refused, Rules, grid, window
from signalling.visits import ACTIVE
from tests.conftest import app_client
from tests.integration.test_bad_input import assert_error
from tests.support.cast import Cast, cast
from tests.support.clock import Clock
from tests.support.helpers import Api, Reply, Who
from tests.support.sockets import open_socket

CHICAGO = ZoneInfo("America/Chicago")
TODAY = "2026-03-02"
T0 = datetime(2026, 3, 2, 15, 10, tzinfo=UTC)  # 09:10 CST
VIEW_KEYS = {"id", "facility_id", "connection_id", "family_id", "person_id", "start", "end",
             "timezone", "local_start", "local_end", "blocks", "status", "end_reason",
             "minute_price", "media", "record", "family_media", "person_media", "pause_reason",
             "link_quality", "link_reason"}


def local(day: str, hhmm: str) -> datetime:
    """A Chicago wall time (the first, if the autumn change repeats it), as UTC."""
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(hhmm),
                            CHICAGO).astimezone(UTC)


def at(day: str, hhmm: str) -> str:
    return local(day, hhmm).isoformat()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
async def api(db_url: str, tmp_path: Path, clock: Clock) -> AsyncIterator[Api]:
    async with app_client(db_url, tmp_path, clock=clock) as client:
        yield Api(client)


async def connection_of(api: Api, family: Who, person: Who) -> str:
    r = await api.call("GET", "/connections", family)
    return next(c["id"] for c in r.body["connections"] if c["person_id"] == person.id)


async def pair(api: Api, c: Cast, *, facility: str | None = None, family: Who | None = None,
               person: Who | None = None, credits: int = 500) -> tuple[Who, Who, str]:
    """Another approved connection (a new family and/or person) in the cast's facility."""
    if person is None:
        person = await api.person(c.staff if facility is None else
                                  await api.staff(c.admin, facility), facility or c.facility)
    if family is None:
        family = await api.family()
        if credits:
            assert (await api.buy(family, credits)).status == 201
    r = await api.call("POST", "/connections", family, json={"person_id": person.id})
    assert r.status == 201, r.body
    connection = r.body["connection"]["id"]
    r = await api.call("POST", f"/connections/{connection}/approve", person)
    assert r.status == 200, r.body
    return family, person, connection


async def book(api: Api, who: Who, connection: str, start: str, blocks: int = 1) -> Reply:
    return await api.call("POST", "/visits", who, json={"connection_id": connection,
                                                        "start": start, "blocks": blocks})


def booked(reply: Reply) -> dict[str, Any]:
    assert reply.status == 201, reply
    return reply.body["visit"]


async def slots(api: Api, who: Who, facility: str, day: str | None = TODAY) -> Reply:
    query = f"?date={day}" if day is not None else ""
    return await api.call("GET", f"/facilities/{facility}/slots{query}", who)


# --- the grid (pure) -----------------------------------------------------------------------


def rules(**settings: Any) -> Rules:
    return Rules.of("America/Chicago", FacilitySettings.model_validate(settings).model_dump())


def walls(blocks) -> list[str]:
    return [b.start.astimezone(CHICAGO).strftime("%H:%M%z") for b in blocks]


def assert_contiguous(blocks, minutes: int) -> None:
    for b in blocks:
        assert b.end - b.start == timedelta(minutes=minutes)
    for a, b in pairwise(blocks):
        assert a.end == b.start


def test_grid_of_30_and_15_minute_blocks_inside_visiting_hours() -> None:
    day = grid(rules(), date(2026, 3, 2))
    assert len(day) == 26
    assert day[0].start == datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 08:00 CST
    assert day[-1].end == datetime(2026, 3, 3, 3, 0, tzinfo=UTC)  # 21:00 CST
    assert_contiguous(day, 30)

    fifteen = grid(rules(visit_block_minutes=15), date(2026, 3, 2))
    assert len(fifteen) == 52
    assert_contiguous(fifteen, 15)
    odd = rules(visit_block_minutes=15, visit_hours={"start": "09:15", "end": "10:10"})
    assert walls(grid(odd, date(2026, 3, 2))) == ["09:15-0600", "09:30-0600", "09:45-0600"]
    short = rules(visit_hours={"start": "08:00", "end": "08:45"})
    assert walls(grid(short, date(2026, 3, 2))) == ["08:00-0600"]


def test_grid_on_the_days_chicago_changes_its_clocks() -> None:
    night = rules(visit_hours={"start": "00:00", "end": "04:00"})
    spring = grid(night, date(2026, 3, 8))  # 02:00 CST jumps to 03:00 CDT
    assert walls(spring) == ["00:00-0600", "00:30-0600", "01:00-0600", "01:30-0600",
                             "03:00-0500", "03:30-0500"]
    assert spring[0].start == datetime(2026, 3, 8, 6, 0, tzinfo=UTC)
    assert_contiguous(spring, 30)
    assert spring[-1].end == datetime(2026, 3, 8, 9, 0, tzinfo=UTC)

    # Hours ending at 02:00, a time that never comes that night: the 01:30 block still fits.
    early = grid(rules(visit_hours={"start": "00:00", "end": "02:00"}), date(2026, 3, 8))
    assert walls(early) == ["00:00-0600", "00:30-0600", "01:00-0600", "01:30-0600"]

    autumn = grid(night, date(2026, 11, 1))  # 02:00 CDT falls back to 01:00 CST
    assert walls(autumn) == ["00:00-0500", "00:30-0500", "01:00-0500", "01:30-0500",
                             "01:00-0600", "01:30-0600", "02:00-0600", "02:30-0600",
                             "03:00-0600", "03:30-0600"]
    assert_contiguous(autumn, 30)
    assert autumn[-1].end - autumn[0].start == timedelta(hours=5)  # four wall-clock hours

    # Daytime hours follow the wall clock: 08:00 is 14:00 UTC before, 13:00 UTC after.
    assert grid(rules(), date(2026, 3, 7))[0].start.hour == 14
    after = grid(rules(), date(2026, 3, 8))
    assert after[0].start.hour == 13 and len(after) == 26
    assert len(grid(rules(visit_block_minutes=15), date(2026, 11, 1))) == 52


def refusal(r: Rules, start: datetime, blocks: int = 1, now: datetime = T0) -> str:
    with pytest.raises(Refused) as caught:
        window(r, start, blocks, now)
    return caught.value.code


def test_window_checks() -> None:
    r = rules()
    assert [b.start for b in window(r, local(TODAY, "10:00"), 2, T0)] == [
        local(TODAY, "10:00"), local(TODAY, "10:30")]
    assert refusal(r, local(TODAY, "10:10")) == "not_on_grid"
    assert refusal(r, local(TODAY, "10:00") + timedelta(seconds=1)) == "not_on_grid"
    assert refusal(r, local("2026-03-03", "07:30")) == "outside_hours"
    assert refusal(r, local(TODAY, "21:00")) == "outside_hours"
    assert refusal(r, local(TODAY, "20:30"), blocks=2) == "outside_hours"
    assert window(r, local(TODAY, "20:30"), 1, T0)
    assert refusal(r, local(TODAY, "08:30")) == "in_the_past"
    # Visit now: the 09:00 block is bookable while a minute of it is left.
    assert window(r, local(TODAY, "09:00"), 3, T0)
    assert window(r, local(TODAY, "09:00"), 1, local(TODAY, "09:29"))
    assert refusal(r, local(TODAY, "09:00"), 1,
                   local(TODAY, "09:29") + timedelta(seconds=1)) == "in_the_past"
    # The horizon counts local dates: 14 days after 2 March is 16 March (after the change).
    assert window(r, local("2026-03-16", "20:30"), 1, T0)
    assert refusal(r, local("2026-03-17", "08:00")) == "beyond_horizon"
    assert refusal(r, datetime(9999, 12, 31, 23, 0, tzinfo=UTC)) == "beyond_horizon"
    assert refusal(r, datetime(1, 1, 1, tzinfo=UTC)) == "in_the_past"


# --- slots ---------------------------------------------------------------------------------


async def test_slots_free_kiosks_visit_now_and_minutes_covered(api: Api, clock: Clock) -> None:
    c = await cast(api, credits=500, kiosks=2)
    r = await slots(api, c.family, c.facility)
    assert r.status == 200, r.body
    assert r.body["timezone"] == "America/Chicago" and r.body["minutes_covered"] == 10
    listed = r.body["slots"]
    # 08:00-09:00 have passed; the 09:00 block is under way with 20 minutes left.
    assert listed[0]["start"] == at(TODAY, "09:00") and len(listed) == 24
    assert listed[0]["local_start"] == "2026-03-02T09:00:00-06:00"
    assert {s["free"] for s in listed} == {2}
    assert (await slots(api, c.family, c.facility, None)).body == r.body  # today by default

    connection = await connection_of(api, c.family, c.person)
    booked(await book(api, c.family, connection, at(TODAY, "10:00"), blocks=2))
    family2, _, connection2 = await pair(api, c)
    booked(await book(api, family2, connection2, at(TODAY, "10:30")))
    free = {s["start"]: s["free"] for s in (await slots(api, c.staff, c.facility)).body["slots"]}
    assert (free[at(TODAY, "09:30")], free[at(TODAY, "10:00")], free[at(TODAY, "10:30")],
            free[at(TODAY, "11:00")]) == (2, 1, 0, 2)
    # Fewer kiosks than visits already booked: no block ever shows a negative number.
    r = await api.call("PATCH", f"/facilities/{c.facility}", c.admin,
                       json={"settings": {"kiosks": 1}})
    assert r.status == 200
    r = await slots(api, c.admin, c.facility)
    assert r.body["minutes_covered"] is None
    free = {s["start"]: s["free"] for s in r.body["slots"]}
    assert free[at(TODAY, "10:30")] == 0 and min(free.values()) == 0

    clock.now = local(TODAY, "09:29")
    assert (await slots(api, c.family, c.facility)).body["slots"][0]["start"] == \
        at(TODAY, "09:00")
    clock.now = local(TODAY, "09:29") + timedelta(seconds=1)
    assert (await slots(api, c.family, c.facility)).body["slots"][0]["start"] == \
        at(TODAY, "09:30")

    assert (await slots(api, c.family, c.facility, "2026-03-01")).body["slots"] == []
    assert len((await slots(api, c.family, c.facility, "2026-03-16")).body["slots"]) == 26
    assert_error(await slots(api, c.family, c.facility, "2026-03-17"), 422, "beyond_horizon")
    for bad in ("2026-3-2", "20260302", "tomorrow", "2026-02-30", "9999-99-99"):
        assert_error(await slots(api, c.family, c.facility, bad), 422, "invalid_input", bad)
    other = await api.staff(c.admin, await api.facility(c.admin))
    assert_error(await slots(api, other, c.facility), 403, "forbidden")
    assert_error(await slots(api, c.person, c.facility), 403, "forbidden")


async def test_slots_and_a_booking_on_a_dst_day(api: Api, clock: Clock) -> None:
    clock.now = datetime(2026, 3, 7, 18, 0, tzinfo=UTC)
    c = await cast(api, visit_hours={"start": "00:00", "end": "04:00"})
    r = await slots(api, c.family, c.facility, "2026-03-08")
    assert [s["local_start"][11:] for s in r.body["slots"]] == [
        "00:00:00-06:00", "00:30:00-06:00", "01:00:00-06:00", "01:30:00-06:00",
        "03:00:00-05:00", "03:30:00-05:00"]
    assert [s["start"][11:16] for s in r.body["slots"]] == [
        "06:00", "06:30", "07:00", "07:30", "08:00", "08:30"]
    connection = await connection_of(api, c.family, c.person)
    visit = booked(await book(api, c.family, connection, "2026-03-08T01:30:00-06:00", 2))
    assert (visit["start"], visit["end"]) == ("2026-03-08T07:30:00+00:00",
                                              "2026-03-08T08:30:00+00:00")
    assert (visit["local_start"], visit["local_end"]) == ("2026-03-08T01:30:00-06:00",
                                                          "2026-03-08T03:30:00-05:00")


# --- booking -------------------------------------------------------------------------------


async def test_a_booking_is_stored_in_utc_and_told_to_both_parties(api: Api) -> None:
    c = await cast(api)
    connection = await connection_of(api, c.family, c.person)
    sock = await open_socket(api.client, c.person)
    visit = booked(await book(api, c.family, connection, "2026-03-02T11:00:00-06:00", 2))
    assert set(visit) == VIEW_KEYS
    assert visit | {"id": None} == {
        "id": None, "facility_id": c.facility, "connection_id": connection,
        "family_id": c.family.id, "person_id": c.person.id,
        "start": "2026-03-02T17:00:00+00:00", "end": "2026-03-02T18:00:00+00:00",
        "timezone": "America/Chicago", "local_start": "2026-03-02T11:00:00-06:00",
        "local_end": "2026-03-02T12:00:00-06:00", "blocks": 2, "status": "scheduled",
        "end_reason": None, "minute_price": 50, "media": "direct", "record": True,
        "family_media": "absent", "person_media": "absent", "pause_reason": None,
        "link_quality": None, "link_reason": None}
    pushed = await sock.push()
    assert pushed["type"] == "visit.updated" and pushed["data"] == visit
    async with api.ctx.store.read() as conn:
        for who in (c.family, c.person):
            kinds = [(e.type, e.data["id"]) for e in await events.since(conn, who.id, 0, 100)
                     if e.type.startswith("visit.")]
            assert kinds == [("visit.updated", visit["id"])], who
        row = (await conn.execute(select(visits).where(visits.c.id == visit["id"]))).one()
        assert row.meter is None and row.booked_by == c.family.id
    for who in (c.family, c.person, c.staff, c.admin):
        r = await api.call("GET", "/visits", who)
        assert [v["id"] for v in r.body["visits"]] == [visit["id"]], who
    await sock.ws.close()


async def test_the_booking_fixes_price_media_and_recording(api: Api) -> None:
    c = await cast(api, prices={"visit_minute": 70}, media="relay")
    connection = await connection_of(api, c.family, c.person)
    first = booked(await book(api, c.family, connection, at(TODAY, "10:00")))
    assert (first["minute_price"], first["media"], first["record"]) == (70, "relay", True)
    r = await api.call("POST", f"/connections/{connection}/privileged", c.staff,
                       json={"privileged": True})
    assert r.status == 200
    second = booked(await book(api, c.family, connection, at(TODAY, "11:00")))
    assert second["record"] is False, "a privileged contact's visit is never recorded"
    r = await api.call("POST", f"/connections/{connection}/privileged", c.staff,
                       json={"privileged": False})
    r = await api.call("PATCH", f"/facilities/{c.facility}", c.admin, json={"settings": {
        "record_visits": False, "prices": {"visit_minute": 90}, "media": "direct"}})
    assert r.status == 200
    third = booked(await book(api, c.family, connection, at(TODAY, "12:00")))
    assert (third["minute_price"], third["media"], third["record"]) == (90, "direct", False)
    listed = (await api.call("GET", "/visits", c.family)).body["visits"]
    assert [(v["minute_price"], v["media"]) for v in listed] == [
        (70, "relay"), (70, "relay"), (90, "direct")]


async def test_each_bad_window_answers_its_code(api: Api) -> None:
    c = await cast(api)
    connection = await connection_of(api, c.family, c.person)
    cases = [
        (at(TODAY, "10:10"), 1, 422, "not_on_grid"),
        ("2026-03-02T10:00:30-06:00", 1, 422, "not_on_grid"),
        (at("2026-03-03", "07:30"), 1, 422, "outside_hours"),
        (at(TODAY, "21:00"), 1, 422, "outside_hours"),
        (at(TODAY, "20:30"), 2, 422, "outside_hours"),
        (at(TODAY, "10:00"), 96, 422, "outside_hours"),
        (at(TODAY, "08:30"), 1, 422, "in_the_past"),
        (at("2026-03-17", "10:00"), 1, 422, "beyond_horizon"),
        ("9999-12-31T23:30:00+00:00", 1, 422, "beyond_horizon"),
        ("0001-01-01T00:00:00+00:00", 1, 422, "in_the_past"),
        ("0001-01-01T00:00:00+14:00", 1, 422, "in_the_past"),
        ("9999-12-31T23:59:59-14:00", 1, 422, "beyond_horizon"),
        (at(TODAY, "10:00"), 0, 422, "invalid_input"),
        (at(TODAY, "10:00"), 97, 422, "invalid_input"),
        ("2026-03-02T10:00:00", 1, 422, "invalid_input"),  # no offset: which 10:00?
        ("10:00", 1, 422, "invalid_input"),
    ]
    for start, blocks, status, code in cases:
        assert_error(await book(api, c.family, connection, start, blocks), status, code,
                     f"{start} x{blocks}")
    r = await api.call("POST", "/visits", c.family,
                       json={"connection_id": connection, "start": at(TODAY, "10:00"),
                             "blocks": "2"})
    assert_error(r, 422, "invalid_input", "blocks as a string")
    # Visit now: the block under way, with twenty minutes of it left; and the horizon's edge.
    now = booked(await book(api, c.family, connection, at(TODAY, "09:00"), 2))
    assert now["start"] == at(TODAY, "09:00") and now["blocks"] == 2
    booked(await book(api, c.family, connection, at("2026-03-16", "20:30")))


async def test_neither_party_may_be_double_booked(api: Api) -> None:
    c = await cast(api)
    connection = await connection_of(api, c.family, c.person)
    _, _, family_other = await pair(api, c, family=c.family)  # the family, another person
    family2, _, person_other = await pair(api, c, person=c.person)  # the person, another family
    elsewhere = await api.facility(c.admin)
    _, _, family_away = await pair(api, c, facility=elsewhere, family=c.family)

    first = booked(await book(api, c.family, connection, at(TODAY, "10:00"), 2))
    assert_error(await book(api, c.family, family_other, at(TODAY, "10:30")), 409,
                 "slot_taken", "the family, at the same facility")
    assert_error(await book(api, c.family, family_away, at(TODAY, "09:30"), 2), 409,
                 "slot_taken", "the family, at another facility")
    assert_error(await book(api, family2, person_other, at(TODAY, "10:30")), 409,
                 "slot_taken", "the person")
    assert_error(await book(api, c.family, connection, at(TODAY, "10:00")), 409,
                 "slot_taken", "the same booking again")
    # Windows are half-open: back to back is not an overlap.
    booked(await book(api, family2, person_other, at(TODAY, "11:00")))
    booked(await book(api, c.family, family_other, at(TODAY, "09:30")))
    # A cancelled visit holds nobody.
    r = await api.call("POST", f"/visits/{first['id']}/cancel", c.staff)
    assert r.status == 200, r.body
    booked(await book(api, c.family, family_away, at(TODAY, "10:00"), 2))


async def test_kiosk_capacity(api: Api) -> None:
    c = await cast(api, kiosks=1)
    connection = await connection_of(api, c.family, c.person)
    family2, _, connection2 = await pair(api, c)
    booked(await book(api, c.family, connection, at(TODAY, "10:00")))
    assert_error(await book(api, family2, connection2, at(TODAY, "10:00")), 409, "no_capacity")
    assert_error(await book(api, family2, connection2, at(TODAY, "09:30"), 2), 409,
                 "no_capacity", "a window overlapping the full block")
    booked(await book(api, family2, connection2, at(TODAY, "10:30")))


async def test_concurrent_bookings_for_the_last_kiosk(api: Api) -> None:
    c = await cast(api, kiosks=2)
    connection = await connection_of(api, c.family, c.person)
    booked(await book(api, c.family, connection, at(TODAY, "10:00")))
    racers = [await pair(api, c) for _ in range(6)]
    for round_ in ("10:00", "14:00"):  # one kiosk left, then two
        replies = await asyncio.gather(*(book(api, family, con, at(TODAY, round_))
                                         for family, _, con in racers))
        won = [r for r in replies if r.status == 201]
        for r in replies:
            if r.status != 201:
                assert_error(r, 409, "no_capacity")
        assert len(won) == (1 if round_ == "10:00" else 2), [r.status for r in replies]
        async with api.ctx.store.read() as conn:
            held = (await conn.execute(select(func.count()).select_from(visits).where(
                visits.c.start_at == local(TODAY, round_), visits.c.status.in_(ACTIVE)))
            ).scalar_one()
        assert held == 2


async def test_one_family_racing_itself_at_two_facilities(api: Api) -> None:
    c = await cast(api)
    links = [await connection_of(api, c.family, c.person)]
    for _ in range(3):
        links.append((await pair(api, c, facility=await api.facility(c.admin),
                                 family=c.family))[2])
    replies = await asyncio.gather(*(book(api, c.family, link, at(TODAY, "10:00"))
                                     for link in links))
    assert sorted(r.status for r in replies) == [201, 409, 409, 409], replies
    for r in replies:
        if r.status != 201:
            assert_error(r, 409, "slot_taken")


async def test_booking_needs_a_balance_of_one_minute(api: Api) -> None:
    c = await cast(api, credits=0, prices={"visit_minute": 600})
    connection = await connection_of(api, c.family, c.person)
    assert_error(await book(api, c.family, connection, at(TODAY, "10:00")), 402,
                 "insufficient_credits", "no credits")
    assert (await api.buy(c.family, 500)).status == 201
    assert (await slots(api, c.family, c.facility)).body["minutes_covered"] == 0
    assert_error(await book(api, c.family, connection, at(TODAY, "10:00")), 402,
                 "insufficient_credits", "500 of 600")
    r = await api.call("PATCH", f"/facilities/{c.facility}", c.admin,
                       json={"settings": {"prices": {"visit_minute": 500}}})
    assert r.status == 200
    assert (await slots(api, c.family, c.facility)).body["minutes_covered"] == 1
    booked(await book(api, c.family, connection, at(TODAY, "10:00")))
    assert (await api.call("GET", "/me", c.family)).body["balance"] == 500, "booking is free"


async def test_only_the_family_of_an_approved_contact_books(api: Api) -> None:
    c = await cast(api)
    connection = await connection_of(api, c.family, c.person)
    stranger = await api.family("Stranger")
    assert (await api.buy(stranger, 500)).status == 201
    start = at(TODAY, "10:00")
    assert_error(await book(api, stranger, connection, start), 403, "not_connected", "stranger")
    assert_error(await book(api, c.family, "con_" + secrets.token_hex(12), start), 403,
                 "not_connected", "no such connection")
    r = await api.call("POST", "/connections", stranger, json={"person_id": c.person.id})
    asked = r.body["connection"]["id"]
    assert_error(await book(api, stranger, asked, start), 403, "not_connected", "requested")
    assert (await api.call("POST", f"/connections/{connection}/block", c.person)).status == 200
    assert_error(await book(api, c.family, connection, start), 403, "not_connected", "blocked")
    for who in (c.person, c.staff, c.admin):
        assert_error(await book(api, who, connection, start), 403, "forbidden", who.account["role"])
    async with api.ctx.store.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(visits))).scalar_one() == 0


# --- cancelling ----------------------------------------------------------------------------


async def test_the_family_cancels_only_before_the_cut_off(api: Api, clock: Clock) -> None:
    c = await cast(api, cancel_cutoff_minutes=60)
    connection = await connection_of(api, c.family, c.person)
    soon = booked(await book(api, c.family, connection, at(TODAY, "10:00")))
    later = booked(await book(api, c.family, connection, at(TODAY, "11:00")))
    last = booked(await book(api, c.family, connection, at(TODAY, "12:00")))

    cancel = "/visits/{}/cancel".format
    assert_error(await api.call("POST", cancel(soon["id"]), c.family), 409, "too_late_to_cancel")
    clock.now = local(TODAY, "10:00") - timedelta(seconds=1)
    r = await api.call("POST", cancel(later["id"]), c.family)
    assert r.status == 200, r.body
    assert (r.body["visit"]["status"], r.body["visit"]["end_reason"]) == (
        "cancelled", "cancelled_by_family")
    assert_error(await api.call("POST", cancel(later["id"]), c.family), 409, "not_scheduled")
    clock.now = local(TODAY, "11:00")  # exactly the cut-off of the 12:00 visit
    assert_error(await api.call("POST", cancel(last["id"]), c.family), 409, "too_late_to_cancel")

    other = await api.family("Other")
    assert_error(await api.call("POST", cancel(last["id"]), other), 404, "not_found")
    assert_error(await api.call("POST", cancel(last["id"]), c.person), 403, "forbidden")
    assert_error(await api.call("POST", cancel("vis_nothing"), c.family), 404, "not_found")
    async with api.ctx.store.read() as conn:
        for who in (c.family, c.person):
            statuses = [e.data["status"] for e in await events.since(conn, who.id, 0, 100)
                        if e.type == "visit.updated" and e.data["id"] == later["id"]]
            assert statuses == ["scheduled", "cancelled"]
    audit = await api.call("GET", "/audit", c.staff)
    assert not [e for e in audit.body["entries"] if e["action"] == "visit.cancel"]


async def test_staff_cancel_any_time_and_it_is_audited(api: Api) -> None:
    c = await cast(api, cancel_cutoff_minutes=60)
    connection = await connection_of(api, c.family, c.person)
    now = booked(await book(api, c.family, connection, at(TODAY, "09:00")))  # under way
    later = booked(await book(api, c.family, connection, at(TODAY, "10:00")))
    path = f"/visits/{now['id']}/cancel"
    assert_error(await api.call("POST", path, c.family), 409, "too_late_to_cancel")
    other = await api.staff(c.admin, await api.facility(c.admin))
    assert_error(await api.call("POST", path, other), 404, "not_found")
    r = await api.call("POST", path, c.staff)
    assert r.status == 200, r.body
    assert (r.body["visit"]["status"], r.body["visit"]["end_reason"]) == (
        "cancelled", "cancelled_by_staff")
    assert_error(await api.call("POST", path, c.staff), 409, "not_scheduled")
    r = await api.call("POST", f"/visits/{later['id']}/cancel", c.admin)
    assert r.status == 200 and r.body["visit"]["end_reason"] == "cancelled_by_staff"
    entries = (await api.call("GET", "/audit", c.staff)).body["entries"]
    cancels = [(e["actor_id"], e["actor_role"], e["target"]) for e in entries
               if e["action"] == "visit.cancel"]
    assert cancels == [(c.admin.id, "admin", later["id"]), (c.staff.id, "staff", now["id"])]


# --- listing -------------------------------------------------------------------------------


async def test_who_sees_which_visits(api: Api) -> None:
    c = await cast(api)
    connection = await connection_of(api, c.family, c.person)
    family2, person2, connection2 = await pair(api, c)
    elsewhere = await api.facility(c.admin)
    family3, _, connection3 = await pair(api, c, facility=elsewhere)
    ids = {
        "late": booked(await book(api, c.family, connection, at(TODAY, "15:00")))["id"],
        "early": booked(await book(api, c.family, connection, at(TODAY, "10:00"), 2))["id"],
        "other": booked(await book(api, family2, connection2, at(TODAY, "12:00")))["id"],
        "away": booked(await book(api, family3, connection3, at(TODAY, "11:00")))["id"],
    }

    async def seen(who: Who, query: str = "") -> list[str]:
        r = await api.call("GET", f"/visits{query}", who)
        assert r.status == 200, r.body
        names = {v: k for k, v in ids.items()}
        return [names[v["id"]] for v in r.body["visits"]]

    assert await seen(c.family) == ["early", "late"]  # by start time
    assert await seen(c.person) == ["early", "late"]
    assert await seen(person2) == ["other"]
    assert await seen(c.staff) == ["early", "other", "late"]
    assert await seen(c.admin) == ["early", "away", "other", "late"]
    assert await seen(c.admin, f"?facility_id={elsewhere}") == ["away"]
    window = f"?from={at(TODAY, '10:59')}&to={at(TODAY, '12:00')}".replace("+", "%2B")
    assert await seen(c.admin, window) == ["early", "away"]
    assert await seen(c.staff, "?from=2026-03-02T21:00:00Z") == ["late"]
    assert await seen(c.admin, "?limit=1") == ["early"]
    for bad in ("?from=2026-03-02", "?from=yesterday", "?to=0001-01-01T00:00:00%2B14:00",
                "?limit=0"):
        assert_error(await api.call("GET", f"/visits{bad}", c.family), 422, "invalid_input", bad)


async def test_a_block_under_way_offers_only_the_minutes_left(api: Api, clock: Clock) -> None:
    """Issue 19: at 23:21 the block under way (23:00-23:30) was offered as "covers 18 of 30
    min" with ~9 minutes left. The grid now says what a booking of it can still be, and how
    much of that the balance covers; later blocks keep their whole length."""
    c = await cast(api, credits=1000, visit_hours={"start": "08:00", "end": "23:30"})
    clock.now = local(TODAY, "23:21")
    r = await slots(api, c.family, c.facility)
    assert r.status == 200, r.body
    assert r.body["minutes_covered"] == 20  # 1000 credits at 50 a minute
    under_way = r.body["slots"]
    assert [s["local_start"][11:16] for s in under_way] == ["23:00"], "only the block under way"
    assert (under_way[0]["minutes_left"], under_way[0]["minutes_covered"]) == (9, 9)
    tomorrow = (await slots(api, c.family, c.facility, "2026-03-03")).body["slots"]
    assert {(s["minutes_left"], s["minutes_covered"]) for s in tomorrow} == {(30, 20)}
    # Half a minute later 8 min 30 s are left: the meter bills whole minutes, never the last
    # part of one, so 8 are offered; staff see the minutes left and no coverage.
    clock.now = local(TODAY, "23:21") + timedelta(seconds=30)
    left = (await slots(api, c.family, c.facility)).body["slots"][0]
    assert (left["minutes_left"], left["minutes_covered"]) == (8, 8)
    staff = (await slots(api, c.staff, c.facility)).body["slots"][0]
    assert (staff["minutes_left"], staff["minutes_covered"]) == (8, None)
    # A small balance covers fewer than the minutes left.
    r = await api.call("POST", "/gifts", c.family, json={"to": c.person.id, "credits": 750},
                       key=secrets.token_hex(4))
    assert r.status == 201 and r.body["balance"] == 250
    left = (await slots(api, c.family, c.facility)).body["slots"][0]
    assert (left["minutes_left"], left["minutes_covered"]) == (8, 5)
    # Booking it: the visit is the block (the meter's window ends at 23:30), nothing charged.
    connection = await connection_of(api, c.family, c.person)
    v = booked(await book(api, c.family, connection, at(TODAY, "23:00")))
    assert (v["start"], v["end"]) == (at(TODAY, "23:00"), at(TODAY, "23:30"))
    assert (await api.call("GET", "/me", c.family)).body["balance"] == 250
    # With less than a minute left the block is neither offered nor bookable.
    clock.now = local(TODAY, "23:29") + timedelta(seconds=1)
    assert (await slots(api, c.family, c.facility)).body["slots"] == []
    family2, _, connection2 = await pair(api, c)
    assert_error(await book(api, family2, connection2, at(TODAY, "23:00")), 422, "in_the_past")


async def test_a_family_booking_twice_at_once_books_once(api: Api) -> None:
    """The adversary: one family's requests all at once for the same block. The same
    confirmation sent four times (a double tap, a retry of a lost answer: one Idempotency-Key)
    gives the same visit four times; two confirmations (two keys) give one visit and one
    slot_taken. One visit row in the end, and booking itself charges nothing (the meter bills
    the connected minutes of that one visit)."""
    c = await cast(api, credits=500)
    connection = await connection_of(api, c.family, c.person)
    body = {"connection_id": connection, "start": at(TODAY, "10:00")}
    replies = await asyncio.gather(*(api.call("POST", "/visits", c.family, json=body,
                                              key="confirm-1") for _ in range(4)))
    assert [r.status for r in replies] == [201] * 4, replies
    assert len({r.body["visit"]["id"] for r in replies}) == 1
    # The same key with another block is a conflict, not a second booking.
    r = await api.call("POST", "/visits", c.family, key="confirm-1",
                       json={**body, "start": at(TODAY, "11:00")})
    assert_error(r, 409, "idempotency_conflict")
    replies = await asyncio.gather(*(api.call("POST", "/visits", c.family, key=f"k{i}",
                                              json={**body, "start": at(TODAY, "14:00")})
                                     for i in range(2)))
    assert sorted(r.status for r in replies) == [201, 409], replies
    assert_error(next(r for r in replies if r.status == 409), 409, "slot_taken")
    async with api.ctx.store.read() as conn:
        rows = list(await conn.execute(select(visits.c.start_at).where(
            visits.c.family_id == c.family.id)))
    assert sorted(r.start_at.replace(tzinfo=UTC) if r.start_at.tzinfo is None else r.start_at
                  for r in rows) == [local(TODAY, "10:00"), local(TODAY, "14:00")]
    assert (await api.call("GET", "/me", c.family)).body["balance"] == 500
