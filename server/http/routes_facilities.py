"""Facilities, their staff, people and devices (the audit log: server/http/routes_audit.py)."""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from common.errors import Refused
from server import accounts, audit, facilities
from server.auth import ANY_SESSION
from server.errors import forbidden
from server.facilities import Strict
from server.http.routes_auth import Email, InmateNumber, Name, Password, Pin
from server.http.routing import Call, Route, json_response

TimeZone = Annotated[str, Field(min_length=1, max_length=64)]


class NewFacility(Strict):
    name: Name
    timezone: TimeZone
    settings: dict[str, Any] = Field(default_factory=dict)


class FacilityPatch(Strict):
    name: Name | None = None
    timezone: TimeZone | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


class NewStaff(Strict):
    email: Email
    password: Password
    name: Name


class NewPerson(Strict):
    name: Name
    inmate_number: InmateNumber
    pin: Pin


class NewDevice(Strict):
    label: Annotated[str, Field(min_length=1, max_length=100)]


def _sees_all(call: Call) -> bool:
    return call.me.role in ("family", "admin")


def _full_view(call: Call, facility_id: str) -> bool:
    me = call.me
    return me.role == "admin" or (me.role == "staff" and me.facility_id == facility_id)


async def list_facilities(call: Call) -> web.Response:
    """Facilities the caller may see (staff and people: their own)."""
    async with call.ctx.store.read() as conn:
        rows = await facilities.listing(conn, None if _sees_all(call) else call.me.facility_id)
    return json_response({"facilities": [
        facilities.public_view(r, full=_full_view(call, r.id)) for r in rows]})


async def get_facility(call: Call) -> web.Response:
    """One facility and its settings (the keyword list only for its staff and admins)."""
    facility_id = call.match("facility_id")
    if not _sees_all(call) and call.me.facility_id != facility_id:
        raise forbidden("That belongs to another facility.")
    async with call.ctx.store.read() as conn:
        row = await facilities.get(conn, facility_id)
    return json_response({"facility": facilities.public_view(row, full=_full_view(call, row.id))})


async def create_facility(call: Call) -> web.Response:
    """Create a facility (admin)."""
    body: NewFacility = call.body
    now = call.now()
    async with call.ctx.store.write() as conn:
        row = await facilities.create(conn, name=body.name, timezone=body.timezone,
                                      settings=body.settings, now=now)
        await audit.record(conn, actor_id=call.me.account_id, actor_role=call.me.role,
                           action="facility.create", facility_id=row.id, target=row.id,
                           at=now, details={"name": row.name, "settings": row.settings})
    return json_response({"facility": facilities.public_view(row, full=True)}, 201)


async def update_facility(call: Call) -> web.Response:
    """Change a facility's name, time zone or any of its settings (admin)."""
    body: FacilityPatch = call.body
    facility_id, now = call.match("facility_id"), call.now()
    async with call.ctx.store.write() as conn:
        row = await facilities.update(conn, facility_id, patch=body.settings, name=body.name,
                                      timezone=body.timezone, now=now)
        await audit.record(conn, actor_id=call.me.account_id, actor_role=call.me.role,
                           action="facility.update", facility_id=facility_id, target=facility_id,
                           at=now, details=body.model_dump(exclude_none=True))
    return json_response({"facility": facilities.public_view(row, full=True)})


async def add_staff(call: Call) -> web.Response:
    """Create a staff account for a facility (admin)."""
    body: NewStaff = call.body
    facility_id, now = call.match("facility_id"), call.now()
    hashed = await call.ctx.passwords.hash(body.password)
    async with call.ctx.store.write() as conn:
        await facilities.get(conn, facility_id)
        row = await accounts.create(conn, role="staff", name=body.name, email=body.email,
                                    password_hash=hashed, facility_id=facility_id, now=now)
        await audit.record(conn, actor_id=call.me.account_id, actor_role=call.me.role,
                           action="staff.create", facility_id=facility_id, target=row.id,
                           at=now, details={"email": row.email})
    return json_response({"account": accounts.public(row)}, 201)


async def add_person(call: Call) -> web.Response:
    """Register an incarcerated person with inmate number and PIN (staff, admin)."""
    body: NewPerson = call.body
    facility_id, now = call.match("facility_id"), call.now()
    call.require_facility(facility_id)
    hashed = await call.ctx.passwords.hash(body.pin)
    async with call.ctx.store.write() as conn:
        await facilities.get(conn, facility_id)
        row = await accounts.create(conn, role="person", name=body.name,
                                    inmate_number=body.inmate_number, pin_hash=hashed,
                                    facility_id=facility_id, now=now)
        await audit.record(conn, actor_id=call.me.account_id, actor_role=call.me.role,
                           action="person.create", facility_id=facility_id, target=row.id,
                           at=now, details={"inmate_number": row.inmate_number})
    return json_response({"account": accounts.public(row)}, 201)


async def search_people(call: Call) -> web.Response:
    """Find people in a facility by name or inmate number."""
    facility_id = call.match("facility_id")
    if call.me.role != "family":
        call.require_facility(facility_id)
    q = call.request.query.get("q", "").strip()
    if not 2 <= len(q) <= 100:
        raise Refused("invalid_input", "q must be 2 to 100 characters")
    async with call.ctx.store.read() as conn:
        await facilities.get(conn, facility_id)
        people = await accounts.search_people(conn, facility_id, q,
                                              min(50, call.ctx.settings.page_size_max))
    return json_response({"people": people})


async def add_device(call: Call) -> web.Response:
    """Register a kiosk or tablet; its token is shown once (staff, admin)."""
    body: NewDevice = call.body
    facility_id, now = call.match("facility_id"), call.now()
    call.require_facility(facility_id)
    async with call.ctx.store.write() as conn:
        await facilities.get(conn, facility_id)
        device_id, token = await accounts.register_device(conn, facility_id=facility_id,
                                                          label=body.label, now=now)
        await audit.record(conn, actor_id=call.me.account_id, actor_role=call.me.role,
                           action="device.register", facility_id=facility_id, target=device_id,
                           at=now, details={"label": body.label})
    return json_response({"device_id": device_id, "device_token": token}, 201)


ROUTES = [
    Route("GET", "/facilities", list_facilities, ANY_SESSION),
    Route("POST", "/facilities", create_facility, frozenset({"admin"}), body=NewFacility),
    Route("GET", "/facilities/{facility_id}", get_facility, ANY_SESSION),
    Route("PATCH", "/facilities/{facility_id}", update_facility, frozenset({"admin"}),
          body=FacilityPatch),
    Route("POST", "/facilities/{facility_id}/staff", add_staff, frozenset({"admin"}),
          body=NewStaff),
    Route("POST", "/facilities/{facility_id}/people", add_person,
          frozenset({"staff", "admin"}), body=NewPerson),
    Route("GET", "/facilities/{facility_id}/people", search_people,
          frozenset({"family", "staff", "admin"}), query={"q": "name or inmate number"}),
    Route("POST", "/facilities/{facility_id}/devices", add_device,
          frozenset({"staff", "admin"}), body=NewDevice),
]
