"""Deny by default: every route of server.app.ROUTES, called by every kind of caller.

The table below is written from docs/API.md ("who"), not from the Route objects, so that a route
admitting the wrong roles is caught. A route without a row fails the test: a new route cannot be
forgotten. Allowed callers send a valid request and must get the route's success status;
forbidden callers get 403 `forbidden`, anonymous callers and revoked sessions 401 `unauthorized`.
Where a route hides another facility's objects, the row says so (404 `not_found`).
"""

from __future__ import annotations

import io
import itertools
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp import FormData
from PIL import Image
from sqlalchemy import select, update

from server.app import ROUTES
from server.auth import token_hash
from server.schema import connections, password_resets
from server.settings import Settings
from tests.conftest import test_settings
from tests.support.helpers import VISA, Api, Reply, Who

FAMILY_PASSWORD = "correct horse"
STAFF_PASSWORD = "staff password"
ADMIN_PASSWORD = "admin password"
PIN = "4321"
WATCHED = "contraband"  # on facility A's keyword list: a message with it is held for review

ACCOUNT_ROLES = ("family", "person", "staff", "staff_other", "admin")
# A revoked session of each kind must be treated exactly like no session at all.
REVOKED = tuple(f"revoked_{role}" for role in ACCOUNT_ROLES)
CALLERS = (*ACCOUNT_ROLES, "anonymous", *REVOKED)
EVERYONE = frozenset(CALLERS)
ANY_SESSION = frozenset(ACCOUNT_ROLES)

# Email on, towards a relay that is not there (the port of the discard service, closed
# here): the reset and notification routes are served as in production, and what they queue
# simply waits in the outbox.
# Web Push too, its only push service the same closed port.
MAIL_ON = {"smtp_url": "smtp+plain://127.0.0.1:9", "mail_from": "Kinwire <k@kinwire.test>",
           "public_url": "https://kinwire.test",
           "vapid_private_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAc",  # the scalar 7
           "vapid_subject": "mailto:ops@kinwire.test", "push_services": ("http://127.0.0.1:9",)}


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return test_settings(db_url, tmp_path, **MAIL_ON)


_unique = itertools.count(1)


def unique() -> str:
    return f"{next(_unique)}{secrets.token_hex(3)}"


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def fetch(api: Api, method: str, path: str, token: str | None, req: Req,
                device: str | None = None) -> Reply:
    """Like Api.call, but a body that is not JSON (a photo) comes back as bytes, and no cookie
    goes with it (a login sets one on the client; every caller here is its bearer token).
    `device`: the kiosk's token, which a kiosk session needs on every call (others ignore it)."""
    api.client.session.cookie_jar.clear()
    headers = dict(req.headers)
    if device:
        headers.setdefault("X-Device-Token", device)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if req.key:
        headers["Idempotency-Key"] = req.key
    async with api.client.request(method, "/api/v1" + path, json=req.json, data=req.data,
                                  headers=headers) as resp:
        raw = await resp.read()
        try:
            return Reply(resp.status, json.loads(raw))
        except ValueError:
            return Reply(resp.status, raw)


def ok(reply: Reply, status: int) -> Any:
    assert reply.status == status, reply
    return reply.body


@dataclass
class World:
    """Facility A with its staff, a person on a registered kiosk and a connected family member;
    facility B with its own staff; an admin; revoked sessions of each; and (for the messaging
    routes) spare connections, messages each way, a delivered photo."""

    api: Api
    facility: str
    other_facility: str
    admin: Who
    staff: Who
    staff_other: Who
    family: Who
    person: Who
    inmate_number: str
    device_token: str
    tokens: dict[str, str | None] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)

    async def login(self, email: str, password: str) -> str:
        r = await self.api.call("POST", "/auth/login", json={"email": email, "password": password})
        return ok(r, 200)["token"]

    async def kiosk(self) -> str:
        r = await self.api.call("POST", "/auth/kiosk", json=self.kiosk_body(),
                                headers={"X-Device-Token": self.device_token})
        return ok(r, 200)["token"]

    def kiosk_body(self) -> dict[str, str]:
        return {"facility_id": self.facility, "inmate_number": self.inmate_number, "pin": PIN}

    async def fresh_session(self, role: str) -> str:
        """A new session of the same account as `role` (for calls that end a session)."""
        if role == "person":
            return await self.kiosk()
        who = {"family": self.family, "staff": self.staff, "staff_other": self.staff_other,
               "admin": self.admin}[role]
        password = {"family": FAMILY_PASSWORD, "admin": ADMIN_PASSWORD}.get(role, STAFF_PASSWORD)
        return await self.login(who.account["email"], password)

    async def new_person(self) -> str:
        r = await self.api.call("POST", f"/facilities/{self.facility}/people", self.staff,
                                json={"name": "Pat Other", "inmate_number": f"Q{unique()}",
                                      "pin": PIN})
        return ok(r, 201)["account"]["id"]

    async def request(self, family: Who, person_id: str) -> str:
        r = await self.api.call("POST", "/connections", family, json={"person_id": person_id})
        return ok(r, 201)["connection"]["id"]

    async def approved(self, family: Who, person: Who | str) -> str:
        """An approved connection made through the API; `person` a session or (for a person
        who never logs in) an id, approved straight in the store."""
        person_id = person if isinstance(person, str) else person.id
        connection = await self.request(family, person_id)
        if isinstance(person, Who):
            ok(await self.api.call("POST", f"/connections/{connection}/approve", person), 200)
        else:
            async with self.api.ctx.store.write() as conn:
                await conn.execute(update(connections).where(connections.c.id == connection)
                                   .values(status="approved"))
        return connection

    async def send(self, sender: Who, to: str, body: str, photo_ids: list[str] | None = None,
                   status: str = "delivered") -> str:
        r = await self.api.call("POST", "/messages", sender, key=unique(),
                                json={"to": to, "body": body, "photo_ids": photo_ids or []})
        message = ok(r, 201)["message"]
        assert message["status"] == status, message
        return message["id"]

    async def upload(self, who: Who | str | None) -> Reply:
        form = FormData()
        form.add_field("file", png(), filename="p.png", content_type="image/png")
        return await self.api.call("POST", "/photos", who, data=form)


async def build_world(api: Api, messaging: bool = True) -> World:
    admin = await api.admin()
    facility = await api.facility(admin, keywords=[WATCHED])
    other = await api.facility(admin)
    staff = await api.staff(admin, facility)
    staff_other = await api.staff(admin, other)
    number = f"A{unique()}"
    ok(await api.call("POST", f"/facilities/{facility}/people", staff,
                      json={"name": "Pat Person", "inmate_number": number, "pin": PIN}), 201)
    r = await api.call("POST", f"/facilities/{facility}/devices", staff, json={"label": "kiosk"})
    device_token = ok(r, 201)["device_token"]
    r = await api.call("POST", "/auth/kiosk",
                       json={"facility_id": facility, "inmate_number": number, "pin": PIN},
                       headers={"X-Device-Token": device_token})
    person = Who(ok(r, 200)["token"], r.body["account"], device_token)
    family = await api.family()
    world = World(api, facility, other, admin, staff, staff_other, family, person, number,
                  device_token)
    if messaging:
        world.ids["connection"] = await world.approved(family, person)
    else:
        await api.connect(family, person)
    ok(await api.buy(family, 5000), 201)
    ok(await api.call("POST", "/gifts", family, json={"to": person.id, "credits": 1000},
                      key=unique()), 201)
    if messaging:
        family2 = await api.family("Other")
        # Spare connections to block and unblock, one with each of the world's parties.
        world.ids["family_side"] = await world.approved(family, await world.new_person())
        world.ids["person_side"] = await world.approved(family2, person)
        world.ids["to_family"] = await world.send(person, family.id, "hello")
        world.ids["to_person"] = await world.send(family, person.id, "hello")
        photo = ok(await world.upload(family), 201)["photo_id"]
        shown = await world.send(family, person.id, "look", [photo], status="held")
        ok(await api.call("POST", f"/review/{shown}/approve", staff), 200)
        world.ids["photo"] = photo
    world.tokens = {"family": family.token, "person": person.token, "staff": staff.token,
                    "staff_other": staff_other.token, "admin": admin.token, "anonymous": None}
    for role in ACCOUNT_ROLES:
        token = await world.fresh_session(role)
        ok(await api.call("POST", "/auth/logout", token), 200)
        world.tokens[f"revoked_{role}"] = token
    return world


@dataclass
class Req:
    params: dict[str, str] = field(default_factory=dict)  # path placeholders
    query: str = ""
    json: Any = None
    data: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    key: str | None = None


Build = Callable[[World, str], Awaitable[Req]]


@dataclass(frozen=True)
class Expect:
    allowed: frozenset[str]
    ok: int
    build: Build
    fresh_session: bool = False  # the call ends the caller's session: use a new one each time
    hidden_from: frozenset[str] = frozenset()  # callers told 404: another facility's object


def _req(json: Any = None, **kw: Any) -> Build:
    async def build(world: World, role: str) -> Req:
        return Req(json=json() if callable(json) else json, **kw)
    return build


def _signup() -> dict[str, str]:
    return {"email": f"new-{unique()}@example.test", "password": "long enough", "name": "New"}


async def _login(world: World, role: str) -> Req:
    return Req(json={"email": world.family.account["email"], "password": FAMILY_PASSWORD})


async def _kiosk(world: World, role: str) -> Req:
    return Req(json=world.kiosk_body(), headers={"X-Device-Token": world.device_token})


async def _purchase(world: World, role: str) -> Req:
    return Req(json={"credits": 500, "card": VISA}, key=unique())


async def _checkout(world: World, role: str) -> Req:
    return Req(json={"credits": 500}, key=unique())


async def _paid_checkout(world: World, role: str) -> Req:
    """A checkout of the world's family, paid on the sandbox processor's page: its id and the
    processor's confirmation, as the browser's return brings them."""
    opened = ok(await world.api.call("POST", "/checkouts", world.family,
                                     json={"credits": 500}, key=unique()), 201)
    session = opened["pay_url"].split("#", 1)[1]
    paid = ok(await world.api.call("POST", "/sandbox-pay/pay",
                                   json={"session": session, "card": VISA}), 200)
    return Req(params={"checkout_id": opened["checkout"]["id"]},
               json={"confirmation": paid["confirmation"]})


def _other_party(world: World, role: str) -> str:
    return world.family.id if role == "person" else world.person.id


async def _gift(world: World, role: str) -> Req:
    return Req(json={"to": _other_party(world, role), "credits": 10}, key=unique())


def _staff() -> dict[str, str]:
    return {"email": f"staff-{unique()}@example.test", "password": "long enough", "name": "Off"}


def _person() -> dict[str, str]:
    return {"name": "Another Person", "inmate_number": f"N{unique()}", "pin": "1234"}


async def _reset_token(world: World, role: str) -> Req:
    """A live password-reset token of a family of its own (using it ends that family's
    sessions, not the world's)."""
    fam = await world.api.family("Forgetful")
    token = secrets.token_urlsafe(32)
    now = world.api.ctx.clock()
    async with world.api.ctx.store.write() as conn:
        await conn.execute(password_resets.insert().values(
            token_hash=token_hash(token), account_id=fam.id, created_at=now,
            expires_at=now + timedelta(minutes=30)))
    return Req(json={"token": token, "password": "a new password"})


def _push_subscription() -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from server.push import b64url

    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"endpoint": f"http://127.0.0.1:9/sub/{unique()}",
            "keys": {"p256dh": b64url(point), "auth": b64url(secrets.token_bytes(16))}}


async def _unsubscribe_key(world: World, role: str) -> Req:
    from server import mail
    from server.schema import notification_prefs

    now = world.api.ctx.clock()
    async with world.api.ctx.store.write() as conn:
        await mail.ensure_prefs(conn, world.family.id, now)
        key = (await conn.execute(select(notification_prefs.c.unsubscribe_key).where(
            notification_prefs.c.account_id == world.family.id))).scalar_one()
    return Req(query=f"?key={key}")


async def _new_connection(world: World, role: str) -> Req:
    person_id = await world.new_person() if role == "family" else world.person.id
    return Req(json={"person_id": person_id})


async def _requested(world: World, role: str) -> Req:
    """A new request to the world's person (only the person may decide it)."""
    if role != "person":
        return Req(params={"connection_id": world.ids["connection"]})
    fam = await world.api.family("Asker")
    return Req(params={"connection_id": await world.request(fam, world.person.id)})


def _spare(world: World, role: str) -> str:
    return world.ids["person_side" if role == "person" else "family_side"]


async def _block(world: World, role: str) -> Req:
    return Req(params={"connection_id": _spare(world, role)})


async def _unblock(world: World, role: str) -> Req:
    connection = _spare(world, role)
    if role in ("family", "person", "staff"):  # only whoever blocked it (or staff) unblocks
        r = await world.api.call("POST", f"/connections/{connection}/block",
                                 world.tokens[role],
                                 headers={"X-Device-Token": world.device_token})
        ok(r, 200)
    return Req(params={"connection_id": connection})


async def _privileged(world: World, role: str) -> Req:
    return Req(params={"connection_id": world.ids["family_side"]}, json={"privileged": True})


async def _upload(world: World, role: str) -> Req:
    form = FormData()
    form.add_field("file", png(), filename="p.png", content_type="image/png")
    return Req(data=form)


async def _photo(world: World, role: str) -> Req:
    return Req(params={"photo_id": world.ids["photo"]})


async def _message(world: World, role: str) -> Req:
    return Req(json={"to": _other_party(world, role), "body": "hi"}, key=unique())


async def _inbox_message(world: World, role: str) -> Req:
    return Req(params={"message_id": world.ids["to_family" if role == "family"
                                               else "to_person"]})


async def _own_message(world: World, role: str) -> Req:
    if role not in ("family", "person"):
        return Req(params={"message_id": world.ids["to_person"]})
    sender = world.family if role == "family" else world.person
    return Req(params={"message_id": await world.send(sender, _other_party(world, role), "x")})


async def _held(world: World, role: str) -> Req:
    """A message held in facility A (it names a watched word)."""
    message = await world.send(world.family, world.person.id, f"the {WATCHED} list",
                               status="held")
    return Req(params={"message_id": message}, json={"reason": "not allowed"})


async def _held_selection(world: World, role: str) -> Req:
    """A selection of one held message of facility A to reject (another facility's staff
    are answered per message: `not_found`, tests/integration/test_review_bulk.py)."""
    held = await _held(world, role)
    return Req(json={"decision": "reject", "message_ids": [held.params["message_id"]],
                     "reason": "not allowed"})


_slots = itertools.count()


def _tomorrow(world: World) -> datetime:
    """Tomorrow in the world's facility (America/Chicago), by the app's clock."""
    zone = ZoneInfo("America/Chicago")
    today = world.api.ctx.clock().astimezone(zone).date()
    return datetime.combine(today + timedelta(days=1), time(), zone)


def _next_slot(world: World) -> str:
    """A 30-minute block from tomorrow on, 09:00-18:30 local, never the same one twice."""
    n = next(_slots)
    day = _tomorrow(world).date() + timedelta(days=n // 20)
    wall = time(9 + (n % 20) // 2, 30 * (n % 2))
    return datetime.combine(day, wall, ZoneInfo("America/Chicago")).astimezone(UTC).isoformat()


async def _slot_day(world: World, role: str) -> Req:
    return Req(query=f"?date={_tomorrow(world).date().isoformat()}")


async def _booking(world: World, role: str) -> Req:
    return Req(json={"connection_id": world.ids["connection"], "start": _next_slot(world),
                     "blocks": 1})


async def _visit(world: World, role: str) -> Req:
    """A new scheduled visit of the world's family and person, well before the cut-off."""
    r = await world.api.call("POST", "/visits", world.family,
                             json=(await _booking(world, role)).json)
    return Req(params={"visit_id": ok(r, 201)["visit"]["id"]})


async def _visit_under_way(world: World, role: str) -> Req:
    """A visit whose window is open now (booking cannot make one in the past)."""
    from server.schema import utcnow, visits
    from store.ids import new_id

    now, visit_id = utcnow(), new_id("vis")
    async with world.api.ctx.store.write() as conn:
        await conn.execute(visits.insert().values(
            id=visit_id, facility_id=world.facility, connection_id=world.ids["connection"],
            family_id=world.family.id, person_id=world.person.id, booked_by=world.family.id,
            start_at=now - timedelta(minutes=1), end_at=now + timedelta(minutes=29), blocks=1,
            minute_price=50, media="direct", record=True, status="open", created_at=now,
            updated_at=now))
    return Req(params={"visit_id": visit_id}, json={"reason": "checking"})


async def _recording(world: World, role: str) -> Req:
    """A recording of a relay-mode visit in facility A, kept as the relay keeps one."""
    import tempfile
    from pathlib import Path

    from server.schema import visits
    from tests.integration.test_recordings import webm

    visit_req = await _visit_under_way(world, role)
    async with world.api.ctx.store.read() as conn:
        visit = (await conn.execute(visits.select().where(
            visits.c.id == visit_req.params["visit_id"]))).one()
    with tempfile.TemporaryDirectory() as folder:  # keep() takes the file over
        kept = await world.api.ctx.recordings.keep(visit, webm(Path(folder) / "r.webm", 0.5))
    return Req(params={"recording_id": kept["id"]})


STAFF_HERE = frozenset({"staff", "admin"})  # "staff" = staff of the facility in the path
ADMIN = frozenset({"admin"})
PARTIES = frozenset({"family", "person"})
PARTIES_AND_STAFF = frozenset({"family", "person", "staff"})
ANY_STAFF = frozenset({"staff", "staff_other", "admin"})
OTHER_STAFF = frozenset({"staff_other"})

# (method, path) -> who may call it (API.md), the success status, and a valid request.
EXPECTED: dict[tuple[str, str], Expect] = {
    ("POST", "/auth/signup"): Expect(EVERYONE, 201, _req(_signup)),
    ("POST", "/auth/login"): Expect(EVERYONE, 200, _login),
    ("POST", "/auth/kiosk"): Expect(EVERYONE, 200, _kiosk),
    ("POST", "/auth/reset"): Expect(EVERYONE, 202, _req({"email": "someone@example.test"})),
    ("POST", "/auth/reset/confirm"): Expect(EVERYONE, 200, _reset_token),
    ("GET", "/notifications"): Expect(frozenset({"family"}), 200, _req()),
    ("GET", "/push/key"): Expect(frozenset({"family"}), 200, _req()),
    ("POST", "/push/subscriptions"): Expect(frozenset({"family"}), 200,
                                            _req(_push_subscription)),
    ("POST", "/push/subscriptions/delete"): Expect(frozenset({"family"}), 200,
                                                   _req({"endpoint": "http://127.0.0.1:9/x"})),
    ("PUT", "/notifications"): Expect(frozenset({"family"}), 200,
                                      _req({"kinds": {"receipt": True}})),
    ("GET", "/notifications/unsubscribe"): Expect(EVERYONE, 200, _unsubscribe_key),
    ("POST", "/notifications/unsubscribe"): Expect(EVERYONE, 200, _unsubscribe_key),
    ("POST", "/auth/logout"): Expect(ANY_SESSION, 200, _req(), fresh_session=True),
    ("GET", "/me"): Expect(ANY_SESSION, 200, _req()),
    ("GET", "/facilities"): Expect(ANY_SESSION, 200, _req()),
    ("POST", "/facilities"): Expect(ADMIN, 201, _req(
        {"name": "New Facility", "timezone": "America/New_York", "settings": {}})),
    # Family and admin see every facility; staff and people only their own.
    ("GET", "/facilities/{facility_id}"): Expect(
        frozenset({"family", "person", "staff", "admin"}), 200, _req()),
    ("PATCH", "/facilities/{facility_id}"): Expect(ADMIN, 200, _req({"settings": {"kiosks": 5}})),
    ("POST", "/facilities/{facility_id}/staff"): Expect(ADMIN, 201, _req(_staff)),
    ("POST", "/facilities/{facility_id}/people"): Expect(STAFF_HERE, 201, _req(_person)),
    ("GET", "/facilities/{facility_id}/people"): Expect(
        frozenset({"family", "staff", "admin"}), 200, _req(query="?q=Pat")),
    ("POST", "/facilities/{facility_id}/devices"): Expect(STAFF_HERE, 201,
                                                          _req({"label": "tablet"})),
    # Not facility-scoped by path: staff of any facility read their own facility's log.
    ("GET", "/audit"): Expect(ANY_STAFF, 200, _req()),
    ("GET", "/audit/export"): Expect(ANY_STAFF, 200, _req()),
    ("GET", "/pricing"): Expect(EVERYONE, 200, _req()),  # public purchase terms
    ("POST", "/purchases"): Expect(frozenset({"family"}), 201, _purchase),
    ("POST", "/checkouts"): Expect(frozenset({"family"}), 201, _checkout),
    ("GET", "/checkouts/{checkout_id}"): Expect(frozenset({"family"}), 200, _paid_checkout),
    ("POST", "/checkouts/{checkout_id}/confirm"): Expect(frozenset({"family"}), 200,
                                                         _paid_checkout),
    ("POST", "/gifts"): Expect(PARTIES, 201, _gift),
    ("GET", "/ledger"): Expect(ANY_SESSION, 200, _req()),
    ("GET", "/statement"): Expect(PARTIES, 200, _req(query="?from=2026-01-01&tz=America/Chicago")),
    ("GET", "/statement/export"): Expect(PARTIES, 200, _req()),
    # Connections. GET: the parties their own; staff (of any facility) their facility's.
    ("POST", "/connections"): Expect(frozenset({"family"}), 201, _new_connection),
    ("GET", "/connections"): Expect(frozenset({"family", "person", "staff", "staff_other"}), 200,
                                    _req()),
    ("POST", "/connections/{connection_id}/approve"): Expect(frozenset({"person"}), 200,
                                                             _requested),
    ("POST", "/connections/{connection_id}/deny"): Expect(frozenset({"person"}), 200,
                                                          _requested),
    ("POST", "/connections/{connection_id}/block"): Expect(PARTIES_AND_STAFF, 200, _block),
    ("POST", "/connections/{connection_id}/unblock"): Expect(PARTIES_AND_STAFF, 200, _unblock),
    ("POST", "/connections/{connection_id}/privileged"): Expect(frozenset({"staff"}), 200,
                                                                _privileged),
    # Photos and messages. API.md says "any" for these; staff and admins have no messages or
    # contacts, so the routes admit the parties only (see the report).
    ("POST", "/photos"): Expect(PARTIES, 201, _upload),
    # The owner, the recipient once delivered, the facility's staff, admins; hidden from others.
    ("GET", "/photos/{photo_id}"): Expect(frozenset({"family", "person", "staff", "admin"}), 200,
                                          _photo, hidden_from=OTHER_STAFF),
    ("GET", "/photos/{photo_id}/thumb"): Expect(
        frozenset({"family", "person", "staff", "admin"}), 200, _photo,
        hidden_from=OTHER_STAFF),
    ("POST", "/messages"): Expect(PARTIES, 201, _message),
    ("GET", "/messages"): Expect(PARTIES, 200, _req()),
    ("POST", "/messages/{message_id}/open"): Expect(PARTIES, 200, _inbox_message),
    ("DELETE", "/messages/{message_id}"): Expect(PARTIES, 200, _own_message),
    ("GET", "/review"): Expect(ANY_STAFF, 200, _req(query="?facility_id={facility_id}")),
    ("POST", "/review/{message_id}/approve"): Expect(STAFF_HERE, 200, _held,
                                                     hidden_from=OTHER_STAFF),
    ("POST", "/review/{message_id}/reject"): Expect(STAFF_HERE, 200, _held,
                                                    hidden_from=OTHER_STAFF),
    ("POST", "/review/decisions"): Expect(ANY_STAFF, 200, _held_selection),
    # Visits. Slots: families, and staff of the facility (another's staff get 403 from the
    # facility check). Listing: every role its own. Cancel: the family, staff of the facility
    # (another facility's visit is hidden) and admins.
    ("GET", "/facilities/{facility_id}/slots"): Expect(frozenset({"family", "staff", "admin"}),
                                                       200, _slot_day),
    ("POST", "/visits"): Expect(frozenset({"family"}), 201, _booking),
    ("GET", "/visits"): Expect(ANY_SESSION, 200, _req()),
    ("POST", "/visits/{visit_id}/cancel"): Expect(frozenset({"family", "staff", "admin"}), 200,
                                                  _visit, hidden_from=OTHER_STAFF),
    # A call: staff of the facility end it (another's staff: hidden); the parties get ICE.
    ("POST", "/visits/{visit_id}/end"): Expect(STAFF_HERE, 200, _visit_under_way,
                                               hidden_from=OTHER_STAFF),
    ("GET", "/visits/{visit_id}/ice"): Expect(PARTIES, 200, _visit),
    # Recordings: staff list their own facility's (another's staff get an empty list), admins
    # all; one recording and its file only to staff of its facility and admins.
    ("GET", "/recordings"): Expect(ANY_STAFF, 200, _req()),
    ("GET", "/recordings/{recording_id}"): Expect(STAFF_HERE, 200, _recording,
                                                  hidden_from=OTHER_STAFF),
    ("GET", "/recordings/{recording_id}/media"): Expect(STAFF_HERE, 200, _recording,
                                                        hidden_from=OTHER_STAFF),
}


def _is_error(reply: Reply, status: int, code: str) -> bool:
    body = reply.body
    return (reply.status == status and isinstance(body, dict)
            and isinstance(body.get("error"), dict) and body["error"].get("code") == code
            and isinstance(body["error"].get("message"), str))


def test_every_route_has_an_expectation() -> None:
    routes = {(r.method, r.path) for r in ROUTES}
    missing = sorted(routes - EXPECTED.keys())
    stale = sorted(EXPECTED.keys() - routes)
    assert not missing, f"routes without a row in test_roles.py EXPECTED: {missing}"
    assert not stale, f"rows in EXPECTED for routes that no longer exist: {stale}"


# 14 s quiet; test_wall_clock runs it again under libfaketime, where every clock read is slower
# and it passed the suite's 60 s once the checkout and Janus routes joined the matrix
@pytest.mark.timeout(240)
async def test_role_matrix(api: Api) -> None:
    world = await build_world(api)
    failures: list[str] = []
    calls = 0
    for route in ROUTES:
        expect = EXPECTED.get((route.method, route.path))
        assert expect is not None, f"{route.method} {route.path}: no row in EXPECTED"
        for caller in CALLERS:
            req = await expect.build(world, caller)
            token = world.tokens[caller]
            if expect.fresh_session and caller in ACCOUNT_ROLES:
                token = await world.fresh_session(caller)
            params = {"facility_id": world.facility, **req.params}
            path = route.path.format(**params) + req.query.format(**params)
            reply = await fetch(api, route.method, path, token, req, world.device_token)
            calls += 1
            where = f"{route.method} {path} as {caller}: got {reply.status} {reply.body!s:.160}"
            public = "anonymous" in expect.allowed
            if caller in expect.allowed or (public and caller.startswith("revoked_")):
                if reply.status != expect.ok:
                    failures.append(f"{where}; expected {expect.ok} (allowed)")
            elif caller == "anonymous" or caller.startswith("revoked_"):
                if not _is_error(reply, 401, "unauthorized"):
                    failures.append(f"{where}; expected 401 unauthorized")
            elif caller in expect.hidden_from:
                if not _is_error(reply, 404, "not_found"):
                    failures.append(f"{where}; expected 404 not_found (another facility's)")
            elif not _is_error(reply, 403, "forbidden"):
                failures.append(f"{where}; expected 403 forbidden")
    assert calls == len(ROUTES) * len(CALLERS)
    assert not failures, f"{len(failures)} of {calls} calls wrong:\n" + "\n".join(failures)


async def _facility_ids(api: Api, who: Who | str) -> set[str]:
    r = await api.call("GET", "/facilities", who)
    return {f["id"] for f in ok(r, 200)["facilities"]}


async def test_facility_visibility_by_role(api: Api) -> None:
    world = await build_world(api, messaging=False)
    both = {world.facility, world.other_facility}
    assert await _facility_ids(api, world.family) >= both
    assert await _facility_ids(api, world.admin) >= both
    assert await _facility_ids(api, world.staff) == {world.facility}
    assert await _facility_ids(api, world.staff_other) == {world.other_facility}
    assert await _facility_ids(api, world.person) == {world.facility}

    other = f"/facilities/{world.other_facility}"
    for who in (world.person, world.staff):
        r = await api.call("GET", other, who)
        assert _is_error(r, 403, "forbidden"), r
    for who in (world.family, world.admin, world.staff_other):
        r = await api.call("GET", other, who)
        assert r.status == 200 and r.body["facility"]["id"] == world.other_facility, r

    # Staff of A cannot search, register people or devices in B; B's own staff can.
    people = {"name": "Bo", "inmate_number": f"B{unique()}", "pin": "1234"}
    for method, path, body in (("GET", f"{other}/people?q=Pat", None),
                               ("POST", f"{other}/people", people),
                               ("POST", f"{other}/devices", {"label": "k"})):
        r = await api.call(method, path, world.staff, json=body)
        assert _is_error(r, 403, "forbidden"), (method, path, r)
        r = await api.call(method, path, world.staff_other, json=body)
        assert r.status in (200, 201), (method, path, r)


async def test_a_person_keeps_no_session_after_logout(api: Api) -> None:
    world = await build_world(api, messaging=False)
    token = await world.kiosk()
    me = ok(await api.call("GET", "/me", token), 200)
    assert me["account"]["role"] == "person"
    assert me["account"]["facility_id"] == world.facility
    assert me["balance"] == 1000
    ok(await api.call("POST", "/auth/logout", token), 200)
    for method, path in (("GET", "/me"), ("GET", "/facilities"), ("POST", "/auth/logout")):
        r = await api.call(method, path, token)
        assert _is_error(r, 401, "unauthorized"), (method, path, r)
    # The person's other session (the world's) is untouched.
    ok(await api.call("GET", "/me", world.person), 200)
