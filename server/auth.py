"""Who is asking: passwords (argon2id), session tokens, and the login attempt keys.

Session tokens are 256 random bits, shown to the client once and stored only as their SHA-256
(a token is high-entropy, so a fast hash is enough; passwords and PINs get argon2id).
A session expires, and logout revokes it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import and_, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.attempts import Attempts, Key
from server.schema import accounts, devices, sessions
from store import Statement, Store
from store.ids import new_id

# The role sets every HTTP route and WebSocket op is declared with (server/http/routing.py
# Route, server/gateway/ops.py Op): one place, so "staff" means the same everywhere. An admin
# acts as staff of any facility.
FAMILY = frozenset({"family"})
PERSON = frozenset({"person"})
PARTIES = frozenset({"family", "person"})
STAFF = frozenset({"staff", "admin"})
ANY_SESSION = PARTIES | STAFF


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
    device_hash: str | None = None  # a kiosk session's device token (SHA-256), while not revoked

    def device_matches(self, device_token: str | None) -> bool:
        """A kiosk or tablet session is used only with its own device's token (issue 17: it
        was a bearer token for 2 hours without it); other sessions have no device."""
        if self.device_id is None:
            return True
        return (self.device_hash is not None and bool(device_token)
                and hmac.compare_digest(token_hash(device_token), self.device_hash))


class Passwords:
    """argon2id hashing, run off the event loop (a hash costs tens of milliseconds by design)
    on a pool of its own: work queued elsewhere (photos, blob writes on the default pool) never
    makes a login wait (issue 17: six slow photos made a login take 29.7 s)."""

    def __init__(self, time_cost: int, memory_kib: int, workers: int = 2) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="argon2")
        # Verified against when the account does not exist, so that a miss costs what a hit does.
        self._decoy = self._hasher.hash(secrets.token_hex(16))

    async def hash(self, secret: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._hasher.hash,
                                                                 secret)

    async def verify(self, hashed: str | None, secret: str) -> bool:
        matched = await asyncio.get_running_loop().run_in_executor(
            self._pool, self._matches, hashed or self._decoy, secret)
        return matched and hashed is not None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

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
_s, _a, _d = sessions, accounts, devices
_PRINCIPAL = (
    select(_s.c.id, _s.c.device_id, _s.c.expires_at, _a.c.id.label("account_id"), _a.c.role,
           _a.c.facility_id, _a.c.name, _d.c.token_hash.label("device_hash"))
    .join(_a, _a.c.id == _s.c.account_id)
    .outerjoin(_d, and_(_d.c.id == _s.c.device_id, _d.c.revoked_at.is_(None)))
    .where(_s.c.token_hash == bindparam("p_hash", type_=_s.c.token_hash.type),
           _s.c.revoked_at.is_(None),
           _s.c.expires_at > bindparam("p_now", type_=_s.c.expires_at.type),
           _a.c.disabled.is_(False)))


async def principal_for(conn: AsyncConnection, token: str, now: datetime) -> Principal | None:
    """The live session's caller, read on every call (never cached): a revoked or expired
    session is refused at once."""
    row = (await conn.execute(_PRINCIPAL, {"p_hash": token_hash(token), "p_now": now})).first()
    return None if row is None else _principal(tuple(row))


_PRINCIPAL_POINT = Statement(_PRINCIPAL)


async def session_principal(store: Store, token: str, now: datetime) -> Principal | None:
    """principal_for() as a read of its own: on SQLite one statement on the loop (a socket's
    auth is on every connect; Statement.point_read), else a read transaction from the pool.
    Same statement either way, so a revoked or expired session is refused at once."""
    row = await _PRINCIPAL_POINT.point_read(store, {"p_hash": token_hash(token), "p_now": now})
    return None if row is None else _principal(row)


def _principal(row: tuple) -> Principal:
    session_id, device_id, expires_at, account_id, role, facility_id, name, device_hash = row
    return Principal(account_id, role, facility_id, session_id, name, device_id, expires_at,
                     device_hash)


async def revoke_session(conn: AsyncConnection, session_id: str, now: datetime) -> None:
    await conn.execute(sessions.update().where(sessions.c.id == session_id,
                                               sessions.c.revoked_at.is_(None))
                       .values(revoked_at=now))


async def revoke_sessions(conn: AsyncConnection, account_id: str, now: datetime) -> list[str]:
    """Every live session of the account revoked (a password reset); their ids, so that the
    caller can close their sockets."""
    revoked = list((await conn.execute(select(sessions.c.id).where(
        sessions.c.account_id == account_id, sessions.c.revoked_at.is_(None)))).scalars())
    if revoked:
        await conn.execute(sessions.update().where(sessions.c.id.in_(revoked))
                           .values(revoked_at=now))
    return revoked


class LoginLimiter:
    """The login keys (docs/security.md, "Attempt limits"): a password login is limited per
    account and client address (`failures_max`) and per address (x10), with one verification
    in flight per account; a PIN login per person and kiosk (`failures_max`, then back-off),
    per person across kiosks (x4, back-off) and per kiosk (x10, back-off), one verification in
    flight per person. No PIN key is a facility's or an address's alone, and a victim's own
    address or kiosk is never locked by another's failures. The counters are `counters`: the
    store's (server/attempts.py), or Redis's where configured (server/attempts_redis.py)."""

    def __init__(self, failures_max: int, window_s: int, backoff_base_s: float = 30.0,
                 counters: Attempts | None = None) -> None:
        self.failures_max = failures_max
        self.counters = counters or Attempts(window_s, backoff_base_s)
        self.reserve = self.counters.reserve
        self.settle = self.counters.settle
        self.prune = self.counters.prune

    def password_keys(self, email: str, address: str) -> list[Key]:
        m = self.failures_max
        return [Key(f"pw:{email}", single=True), Key(f"pw:{email}|ip:{address}", limit=m),
                Key(f"ip:{address}", limit=m * 10)]

    def pin_keys(self, facility_id: str, number: str, device_id: str) -> list[Key]:
        m, person = self.failures_max, f"pin:{facility_id}/{number}"
        return [Key(person, limit=m * 4, backoff=True, single=True, alert="person"),
                Key(f"{person}|dev:{device_id}", limit=m, backoff=True, alert="person_on_kiosk"),
                Key(f"dev:{device_id}", limit=m * 10, backoff=True, alert="kiosk")]

