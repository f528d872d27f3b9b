"""Who is asking: passwords (argon2id), session tokens, and the failed-login limit.

Session tokens are 256 random bits, shown to the client once and stored only as their SHA-256
(a token is high-entropy, so a fast hash is enough; passwords and PINs get argon2id).
A session expires, and logout revokes it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.errors import ApiError
from server.ids import new_id
from server.store.schema import accounts, login_failures, sessions

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


async def principal_for(conn: AsyncConnection, token: str, now: datetime) -> Principal | None:
    s, a = sessions, accounts
    row = (await conn.execute(
        select(s.c.id, s.c.device_id, s.c.expires_at, a.c.id.label("account_id"), a.c.role,
               a.c.facility_id, a.c.name)
        .join(a, a.c.id == s.c.account_id)
        .where(s.c.token_hash == token_hash(token), s.c.revoked_at.is_(None),
               s.c.expires_at > now, a.c.disabled.is_(False)))).first()
    if row is None:
        return None
    return Principal(row.account_id, row.role, row.facility_id, row.id, row.name, row.device_id,
                     row.expires_at)


async def revoke_session(conn: AsyncConnection, session_id: str, now: datetime) -> None:
    await conn.execute(sessions.update().where(sessions.c.id == session_id,
                                               sessions.c.revoked_at.is_(None))
                       .values(revoked_at=now))


class LoginLimiter:
    """At most `failures_max` failed logins per identity (and 10x that per client address)
    within `window_s`; counted in the database so that every process sees the same count."""

    def __init__(self, failures_max: int, window_s: int) -> None:
        self.failures_max = failures_max
        self.window = timedelta(seconds=window_s)

    def _limits(self, identity: str, address: str) -> dict[str, int]:
        return {f"id:{identity}": self.failures_max, f"ip:{address}": self.failures_max * 10}

    async def check(self, conn: AsyncConnection, identity: str, address: str,
                    now: datetime) -> None:
        for key, limit in self._limits(identity, address).items():
            count = (await conn.execute(
                select(func.count()).select_from(login_failures)
                .where(login_failures.c.key == key, login_failures.c.at > now - self.window)
            )).scalar_one()
            if count >= limit:
                raise ApiError(429, "too_many_attempts",
                               "Too many failed attempts; try again later.",
                               retry_after_s=int(self.window.total_seconds()))

    async def failed(self, conn: AsyncConnection, identity: str, address: str,
                     now: datetime) -> None:
        for key in self._limits(identity, address):
            await conn.execute(delete(login_failures).where(
                login_failures.c.key == key, login_failures.c.at <= now - self.window))
            await conn.execute(login_failures.insert().values(key=key, at=now))
