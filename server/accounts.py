"""Accounts of every role, devices (kiosks and tablets), and how each one logs in."""

from __future__ import annotations

import secrets
import unicodedata
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import ledger
from common.errors import Refused
from server.auth import token_hash
from server.errors import not_found
from server.schema import accounts, devices
from store import Record
from store.ids import new_id

# Roles that hold credits and so get a ledger account.
HOLDERS = ("family", "person")


def normal_email(value: str) -> str:
    """The one spelling of an email address, decided before it is looked up or made unique:
    NFKC (fullwidth and other compatibility forms fold to the plain letters), lower case.
    ValueError when it holds a format, control, private-use or unassigned character, or any
    space: a zero-width space made a second account that looked like the first."""
    value = unicodedata.normalize("NFKC", value.strip()).lower()
    if any(ch.isspace() or unicodedata.category(ch) in ("Cf", "Cc", "Co", "Cs", "Cn")
           for ch in value):
        raise ValueError("not an email address")
    return value


def public(row: Record) -> dict[str, Any]:
    view = {"id": row.id, "role": row.role, "name": row.name,
            "facility_id": row.facility_id}
    if row.email:
        view["email"] = row.email
    if row.inmate_number:
        view["inmate_number"] = row.inmate_number
    return view


# An account id's prefix says its role (store/ids.py new_id: "<prefix>_..."); server/mail.py
# tells families' events from the rest by it without a query.
ID_PREFIX = {"family": "fam", "person": "per"}


def is_family(account_id: str) -> bool:
    return account_id.startswith(ID_PREFIX["family"] + "_")


async def create(conn: AsyncConnection, *, role: str, name: str, now: datetime,
                 email: str | None = None, password_hash: str | None = None,
                 facility_id: str | None = None, inmate_number: str | None = None,
                 pin_hash: str | None = None) -> Record:
    account_id = new_id(ID_PREFIX.get(role, role[:3]))
    try:
        # A savepoint, so that a duplicate leaves the caller's transaction usable.
        async with conn.begin_nested():
            await conn.execute(accounts.insert().values(
                id=account_id, role=role, name=name, email=email, password_hash=password_hash,
                facility_id=facility_id, inmate_number=inmate_number, pin_hash=pin_hash,
                created_at=now, disabled=False))
    except IntegrityError:
        if email is not None:
            raise Refused("email_taken", "An account with that email exists.") from None
        raise Refused("inmate_number_taken",
                       "That inmate number is already registered in this facility.") from None
    if role in HOLDERS:
        await ledger.open_account(conn, account_id)
    return await get(conn, account_id)


async def get(conn: AsyncConnection, account_id: str) -> Record:
    row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
    if row is None:
        raise not_found("The account")
    return row


async def by_email(conn: AsyncConnection, email: str) -> Record:
    return (await conn.execute(select(accounts).where(accounts.c.email == email))).first()


async def person_by_number(conn: AsyncConnection, facility_id: str, inmate_number: str) -> Record:
    return (await conn.execute(select(accounts).where(
        accounts.c.facility_id == facility_id, accounts.c.inmate_number == inmate_number,
        accounts.c.role == "person"))).first()


async def search_people(conn: AsyncConnection, facility_id: str, q: str,
                        limit: int) -> list[dict[str, Any]]:
    pattern = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = await conn.execute(
        select(accounts.c.id, accounts.c.name, accounts.c.inmate_number)
        .where(accounts.c.facility_id == facility_id, accounts.c.role == "person",
               accounts.c.disabled.is_(False),
               or_(func.lower(accounts.c.name).like(pattern, escape="\\"),
                   func.lower(accounts.c.inmate_number) == q.lower()))
        .order_by(accounts.c.name).limit(limit))
    return [{"id": r.id, "name": r.name, "inmate_number": r.inmate_number} for r in rows]


async def register_device(conn: AsyncConnection, *, facility_id: str, label: str,
                          now: datetime, token: str | None = None) -> tuple[str, str]:
    """A kiosk or tablet; its token is returned once and stored only as a hash."""
    token = token or secrets.token_urlsafe(32)
    device_id = new_id("dev")
    await conn.execute(devices.insert().values(
        id=device_id, facility_id=facility_id, label=label, token_hash=token_hash(token),
        created_at=now))
    return device_id, token


async def device_for(conn: AsyncConnection, facility_id: str, token: str) -> Record:
    return (await conn.execute(select(devices).where(
        devices.c.token_hash == token_hash(token), devices.c.facility_id == facility_id,
        devices.c.revoked_at.is_(None)))).first()
