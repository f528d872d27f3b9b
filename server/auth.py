"""Who is asking: passwords (argon2id), session tokens, and the failed-login limit.

Session tokens are 256 random bits, shown to the client once and stored only as their SHA-256
(a token is high-entropy, so a fast hash is enough; passwords and PINs get argon2id).
A session expires, and logout revokes it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import bindparam, case, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from server import audit, quickread
from server.errors import ApiError
from server.ids import new_id
from server.store import Store
from server.store.schema import accounts, login_attempts, sessions

ROLES = ("family", "person", "staff", "admin")


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request or one socket."""

    account_id: str
    role: str
    facility_id: str | None
    session_id: str
    name: str
    device_id: str | None = None
    expires_at: datetime | None = None


class Passwords:
    """argon2id hashing, run off the event loop (a hash costs tens of milliseconds by design)."""

    def __init__(self, time_cost: int, memory_kib: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        # Verified against when the account does not exist, so that a miss costs what a hit does.
        self._decoy = self._hasher.hash(secrets.token_hex(16))

    async def hash(self, secret: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, secret)

    async def verify(self, hashed: str | None, secret: str) -> bool:
        matched = await asyncio.to_thread(self._matches, hashed or self._decoy, secret)
        return matched and hashed is not None

    def _matches(self, hashed: str, secret: str) -> bool:
        try:
            return self._hasher.verify(hashed, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def open_session(conn: AsyncConnection, *, account_id: str, ttl_s: int, now: datetime,
                       device_id: str | None = None) -> str:
    token = secrets.token_urlsafe(32)
    await conn.execute(sessions.insert().values(
        id=new_id("ses"), token_hash=token_hash(token), account_id=account_id,
        device_id=device_id, created_at=now, expires_at=now + timedelta(seconds=ttl_s)))
    return token


# principal_for()'s statement, built once: every request and every socket's auth runs it, and
# building it cost more CPU than SQLite took to answer it (docs/BENCHMARKS.md, "Connect").
_s, _a = sessions, accounts
_PRINCIPAL = (
    select(_s.c.id, _s.c.device_id, _s.c.expires_at, _a.c.id.label("account_id"), _a.c.role,
           _a.c.facility_id, _a.c.name)
    .join(_a, _a.c.id == _s.c.account_id)
    .where(_s.c.token_hash == bindparam("p_hash", type_=_s.c.token_hash.type),
           _s.c.revoked_at.is_(None),
           _s.c.expires_at > bindparam("p_now", type_=_s.c.expires_at.type),
           _a.c.disabled.is_(False)))


async def principal_for(conn: AsyncConnection, token: str, now: datetime) -> Principal | None:
    """The live session's caller, read on every call (never cached): a revoked or expired
    session is refused at once."""
    row = (await conn.execute(_PRINCIPAL, {"p_hash": token_hash(token), "p_now": now})).first()
    return None if row is None else _principal(tuple(row))


_PRINCIPAL_QUICK = quickread.Lookup(_PRINCIPAL)


async def session_principal(store: Store, token: str, now: datetime) -> Principal | None:
    """principal_for() as a read of its own: on SQLite one statement on the loop (a socket's
    auth is on every connect; server/quickread.py), else a read transaction from the pool.
    Same statement either way, so a revoked or expired session is refused at once."""
    row = _PRINCIPAL_QUICK.row(store, {"p_hash": token_hash(token), "p_now": now})
    if row is quickread.NOT_SERVED:
        async with store.read() as conn:
            return await principal_for(conn, token, now)
    return None if row is None else _principal(row)


def _principal(row: tuple) -> Principal:
    session_id, device_id, expires_at, account_id, role, facility_id, name = row
    return Principal(account_id, role, facility_id, session_id, name, device_id, expires_at)


async def revoke_session(conn: AsyncConnection, session_id: str, now: datetime) -> None:
    await conn.execute(sessions.update().where(sessions.c.id == session_id,
                                               sessions.c.revoked_at.is_(None))
                       .values(revoked_at=now))


@dataclass(frozen=True, slots=True)
class Key:
    """One counter an attempt is reserved against (docs/security.md, "Attempt limits").

    `single`: at most one verification in flight under this key (a lease, released when the
    attempt is settled, or after ATTEMPT_LEASE_S if its process died). `limit`: attempts in
    the window; with `backoff`, passing it delays the next attempt (doubling) instead of
    refusing until the window ends. `alert`: crossing the limit is written to the facility's
    audit log for staff."""

    name: str
    limit: int | None = None
    backoff: bool = False
    single: bool = False
    alert: str | None = None


# How long a reserved attempt may stay unsettled before another may start: an argon2id
# verify takes tens of milliseconds, so only a process that died mid-attempt reaches this.
ATTEMPT_LEASE_S = 10.0
_A = login_attempts


class LoginLimiter:
    """Atomic attempt limits: an attempt is reserved (counted) in the database before its
    password or PIN is verified, in one conditional UPDATE a key, so requests sent all at
    once cannot all pass a check made before any of them was counted. Every process shares
    the counters (one row a key in `login_attempts`, on SQLite and PostgreSQL alike).

    Keys (docs/security.md): a password login is limited per account and client address
    (`failures_max`) and per address (x10), with one verification in flight per account; a
    PIN login per person and kiosk (`failures_max`, then back-off), per person across kiosks
    (x4, back-off) and per kiosk (x10, back-off), one verification in flight per person; no
    key is a facility's or an address's alone for PINs, and a victim's own address or kiosk
    is never locked by another's failures."""

    def __init__(self, failures_max: int, window_s: int, backoff_base_s: float = 30.0) -> None:
        self.failures_max = failures_max
        self.window = timedelta(seconds=window_s)
        self.backoff_base = timedelta(seconds=backoff_base_s)

    def password_keys(self, email: str, address: str) -> list[Key]:
        m = self.failures_max
        return [Key(f"pw:{email}", single=True), Key(f"pw:{email}|ip:{address}", limit=m),
                Key(f"ip:{address}", limit=m * 10)]

    def pin_keys(self, facility_id: str, number: str, device_id: str) -> list[Key]:
        m, person = self.failures_max, f"pin:{facility_id}/{number}"
        return [Key(person, limit=m * 4, backoff=True, single=True, alert="person"),
                Key(f"{person}|dev:{device_id}", limit=m, backoff=True, alert="person_on_kiosk"),
                Key(f"dev:{device_id}", limit=m * 10, backoff=True, alert="kiosk")]

    async def reserve(self, store: Store, keys: list[Key], now: datetime) -> None:
        """Count one attempt under every key, or none (429) when any key refuses it."""
        async with store.write() as conn:
            for key in sorted(keys, key=lambda k: k.name):  # one lock order: no deadlock
                if not await self._take(conn, key, now):
                    raise await self._refusal(conn, key, now)

    async def _take(self, conn: AsyncConnection, key: Key, now: datetime) -> bool:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        await conn.execute(dialect.insert(_A).values(key=key.name, count=0, window_start=now)
                           .on_conflict_do_nothing(index_elements=["key"]))
        stale = _A.c.window_start <= now - self.window
        allowed = [_A.c.key == key.name]
        if key.single:
            allowed.append(or_(_A.c.busy_until.is_(None), _A.c.busy_until <= now))
        if key.backoff:
            allowed.append(or_(stale, _A.c.next_at.is_(None), _A.c.next_at <= now))
        elif key.limit is not None:
            allowed.append(or_(stale, _A.c.count < key.limit))
        values = {"count": case((stale, 1), else_=_A.c.count + 1),
                  "window_start": case((stale, now), else_=_A.c.window_start),
                  "next_at": case((stale, None), else_=_A.c.next_at)}
        if key.single:
            values["busy_until"] = now + timedelta(seconds=ATTEMPT_LEASE_S)
        return (await conn.execute(_A.update().where(*allowed).values(**values))).rowcount == 1

    async def _refusal(self, conn: AsyncConnection, key: Key, now: datetime) -> ApiError:
        row = (await conn.execute(select(_A).where(_A.c.key == key.name))).one()
        if key.single and row.busy_until is not None and row.busy_until > now:
            return ApiError(429, "attempt_in_progress",
                            "Another sign-in attempt for this account is being checked.",
                            retry_after_s=1)
        until = row.next_at if key.backoff else row.window_start + self.window
        return ApiError(429, "too_many_attempts", "Too many failed attempts; try again later.",
                        retry_after_s=max(1, math.ceil((until - now).total_seconds())))

    async def settle(self, store: Store, keys: list[Key], now: datetime, *, succeeded: bool,
                     facility_id: str | None = None, target: str | None = None,
                     actor_id: str = "system") -> None:
        """After the verification: release the lease; a success forgets the attempt, a
        failure keeps it and, past a back-off key's limit, delays the next one (alerting the
        facility's staff the first time in a window)."""
        async with store.write() as conn:
            for key in sorted(keys, key=lambda k: k.name):
                row = (await conn.execute(select(_A).where(_A.c.key == key.name))).first()
                if row is None:
                    continue
                values: dict[str, Any] = {"busy_until": None} if key.single else {}
                if succeeded:
                    values["count"] = max(0, row.count - 1)
                elif key.backoff and row.count >= key.limit:
                    doublings = min(row.count - key.limit, 20)
                    delay = min(self.backoff_base * 2 ** doublings, self.window)
                    values["next_at"] = now + delay
                    if key.alert and row.count == key.limit and facility_id:
                        await audit.record(conn, actor_id=actor_id, actor_role="kiosk",
                                           action="login.backoff", facility_id=facility_id,
                                           target=target, at=now,
                                           details={"scope": key.alert, "failures": row.count})
                if values:
                    await conn.execute(_A.update().where(_A.c.key == key.name).values(**values))
