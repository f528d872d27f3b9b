"""The authorisation matrix of blocks, unblocks and privileged marks: every kind of caller
against every owner of an existing block (issue 17, "What must be shown").

Adversaries: each party trying to lift or overwrite the other's or the staff's block, people
who are not parties of the connection (a family member and a person of the same facility),
another facility's staff, an admin (not a party, not a facility's staff), and anonymous
callers. Written from the rules (docs/security.md, "Who can do what"), not from the code: for
every cell the status, the blocks left standing, the privileged mark, and the audit entries.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from sqlalchemy import select

from server import accounts
from server.auth import open_session
from server.schema import audit_log, connections, devices
from store.ids import new_id
from tests.support.helpers import Api

OWNERS = ("none", "family", "person", "staff")  # who holds a block before the call
CALLERS = ("family", "person", "stranger_family", "stranger_person", "staff", "staff_other",
           "admin", "anonymous")
ACTIONS = ("block", "unblock", "privileged")
_n = itertools.count()


def expected(owner: str, caller: str, action: str) -> tuple[int, set[str]]:
    """The status, and the blocks standing after the call."""
    sides = set() if owner == "none" else {owner}
    if caller == "anonymous":
        return 401, sides
    if action == "privileged":  # staff of the facility only
        return (200 if caller == "staff" else 403), sides
    if caller in ("admin", "staff_other"):  # not a party; not this facility's staff
        return 403, sides
    if caller.startswith("stranger"):  # the connection is not theirs: not found
        return 404, sides
    if action == "block":
        return 200, sides | {caller}
    if caller in sides:  # only its owner lifts a block
        return 200, sides - {caller}
    return (403 if sides else 200), sides


@dataclass
class Rig:
    api: Api
    facility: str
    device_token: str
    tokens: dict[str, str | None]
    staff_id: str


async def _rig(api: Api) -> Rig:
    admin = await api.admin()
    facility, other = await api.facility(admin), await api.facility(admin)
    staff, staff_other = await api.staff(admin, facility), await api.staff(admin, other)
    _, device_token = await api.kiosk_person(staff, facility)
    tokens: dict[str, str | None] = {"staff": staff.token, "staff_other": staff_other.token,
                                     "admin": admin.token, "anonymous": None}
    ctx = api.ctx
    async with ctx.store.write() as conn:
        for role in ("family", "person"):
            row = await _account(conn, role, facility, ctx.clock())
            tokens[f"stranger_{role}"] = await _session(conn, row, device_token, ctx.clock())
    return Rig(api, facility, device_token, tokens, staff.id)


async def _account(conn, role: str, facility: str, now):
    n = next(_n)
    if role == "family":
        return await accounts.create(conn, role="family", name=f"F{n}", now=now,
                                     email=f"m{n}-{new_id('x')}@example.test")
    return await accounts.create(conn, role="person", name=f"P{n}", now=now,
                                 facility_id=facility, inmate_number=f"M{n}{new_id('x')[-6:]}")


async def _session(conn, row, device_token: str, now) -> str:
    device_id = None
    if row.role == "person":  # a kiosk session, bound to the rig's kiosk
        device_id = (await conn.execute(select(devices.c.id).where(
            devices.c.facility_id == row.facility_id))).scalar_one()
    return await open_session(conn, account_id=row.id, ttl_s=3600, now=now, device_id=device_id)


async def _connection(rig: Rig) -> tuple[str, dict[str, str | None]]:
    """A fresh approved connection, with sessions of its family member and person."""
    ctx = rig.api.ctx
    now = ctx.clock()
    async with ctx.store.write() as conn:
        family = await _account(conn, "family", rig.facility, now)
        person = await _account(conn, "person", rig.facility, now)
        connection_id = new_id("con")
        await conn.execute(connections.insert().values(
            id=connection_id, facility_id=rig.facility, family_id=family.id,
            person_id=person.id, status="approved", privileged=False, created_at=now,
            updated_at=now))
        tokens = {**rig.tokens,
                  "family": await _session(conn, family, rig.device_token, now),
                  "person": await _session(conn, person, rig.device_token, now)}
    return connection_id, tokens


async def _call(rig: Rig, token: str | None, action: str, connection_id: str):
    body = {"privileged": True} if action == "privileged" else None
    rig.api.client.session.cookie_jar.clear()  # be exactly the caller: no login's cookie
    # Every caller sends the kiosk's device token; only kiosk sessions need it.
    return await rig.api.call("POST", f"/connections/{connection_id}/{action}", token,
                              json=body, headers={"X-Device-Token": rig.device_token})


async def _state(rig: Rig, connection_id: str) -> tuple[set[str], bool, list[tuple]]:
    async with rig.api.ctx.store.read() as conn:
        row = (await conn.execute(select(connections).where(
            connections.c.id == connection_id))).one()
        entries = (await conn.execute(select(audit_log.c.action, audit_log.c.actor_role)
                                      .where(audit_log.c.target == connection_id)
                                      .order_by(audit_log.c.seq))).all()
    shown = await rig.api.call("GET", "/connections", rig.tokens["staff"])
    view = next(c for c in shown.body["connections"] if c["id"] == connection_id)
    assert view["blocked"] == (row.blocked_by is not None), view
    return set(view["blocked_sides"]), row.privileged, [tuple(e) for e in entries]


async def test_blocks_unblocks_and_privileged_marks_by_every_caller(api: Api) -> None:
    rig = await _rig(api)
    wrong: list[str] = []
    for owner, caller, action in itertools.product(OWNERS, CALLERS, ACTIONS):
        connection_id, tokens = await _connection(rig)
        audit = []
        if owner != "none":
            r = await _call(rig, tokens[owner], "block", connection_id)
            assert r.status == 200, (owner, r)
            audit.append(("connection.block", owner))
        status, sides = expected(owner, caller, action)
        r = await _call(rig, tokens[caller], action, connection_id)
        after, privileged, entries = await _state(rig, connection_id)
        if r.status == 200:
            audit.append((f"connection.{action}", caller))
        cell = f"{action} by {caller}, blocked by {owner}"
        if r.status != status:
            wrong.append(f"{cell}: {r.status} {r.body}, expected {status}")
        if after != sides:
            wrong.append(f"{cell}: blocks {sorted(after)}, expected {sorted(sides)}")
        if privileged != (action == "privileged" and status == 200):
            wrong.append(f"{cell}: privileged is {privileged}")
        if entries != audit:
            wrong.append(f"{cell}: audit {entries}, expected {audit}")
    assert not wrong, f"{len(wrong)} of {len(OWNERS) * len(CALLERS) * len(ACTIONS)} wrong:\n" \
        + "\n".join(wrong)
