"""Attempt counters: an attempt (a login, a photo upload) is reserved, counted in the database,
before its work is done, and settled after.

One conditional UPDATE a key decides, so requests sent all at once cannot all pass a check
made before any of them was counted: the row is the counter on SQLite (writers serialised) and
PostgreSQL (the row lock) alike, and every process shares it (docs/security.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from common.errors import Refused
from server import audit
from server.schema import attempts as _A
from store import Store

# How long a reserved attempt may stay unsettled before another may start under a `single`
# key: a verify takes tens of milliseconds and a photo about a second, so only a process that
# died mid-attempt reaches this.
ATTEMPT_LEASE_S = 10.0

# Longer than any window in use (logins: KINWIRE_LOGIN_WINDOW_S, at most a day; uploads: an hour).
PRUNE_AFTER = timedelta(days=2)

MESSAGES = {
    "attempt_in_progress": "Another sign-in attempt for this account is being checked.",
    "too_many_attempts": "Too many failed attempts; try again later.",
    "upload_in_progress": "Another photo of yours is being processed; send one at a time.",
    "too_many_uploads": "Too many photos this hour; try again later.",
}


@dataclass(frozen=True, slots=True)
class Key:
    """One counter an attempt is reserved against (docs/security.md, "Attempt limits").

    `single`: at most one attempt in flight under this key (a lease, released when the
    attempt is settled, or after ATTEMPT_LEASE_S if its process died). `limit`: attempts in
    the window; with `backoff`, passing it delays the next attempt (doubling) instead of
    refusing until the window ends. `alert`: crossing the limit is written to the facility's
    audit log for staff."""

    name: str
    limit: int | None = None
    backoff: bool = False
    single: bool = False
    alert: str | None = None
    window_s: float | None = None  # None: the limiter's window
    busy: str = "attempt_in_progress"  # the refusal codes (MESSAGES)
    over: str = "too_many_attempts"


async def alert(conn: AsyncConnection, key: Key, count: int, now: datetime, *,
                facility_id: str | None, actor_id: str, target: str | None) -> None:
    """Staff are told, on the facility's audit log, when a back-off key first passes its
    limit in a window."""
    if key.alert and facility_id:
        await audit.record(conn, actor_id=actor_id, actor_role="kiosk", action="login.backoff",
                           facility_id=facility_id, target=target, at=now,
                           details={"scope": key.alert, "failures": count})


class Attempts:
    """Reserve attempts under Keys before their work, settle them after, in the store's
    `attempts` table (server/attempts_redis.py keeps the same counters in Redis)."""

    def __init__(self, window_s: float, backoff_base_s: float = 30.0) -> None:
        self.window = timedelta(seconds=window_s)
        self.backoff_base = timedelta(seconds=backoff_base_s)

    def _window(self, key: Key) -> timedelta:
        return self.window if key.window_s is None else timedelta(seconds=key.window_s)

    def backoff(self, key: Key, count: int) -> timedelta:
        """The wait after failure number `count` of a back-off key past its limit."""
        doublings = min(count - (key.limit or 0), 20)
        return min(self.backoff_base * 2 ** doublings, self._window(key))

    async def close(self) -> None:
        """Nothing to close: the counters live in the store."""

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
        stale = _A.c.window_start <= now - self._window(key)
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

    async def _refusal(self, conn: AsyncConnection, key: Key, now: datetime) -> Refused:
        # Read after the refused UPDATE: on PostgreSQL the lease may have been released in
        # between, so "over the limit" is decided from the row and anything else was the lease.
        row = (await conn.execute(select(_A).where(_A.c.key == key.name))).one()
        fresh = row.window_start <= now - self._window(key)
        if key.backoff and not fresh and row.next_at is not None and row.next_at > now:
            until = row.next_at
        elif not key.backoff and key.limit is not None and not fresh and row.count >= key.limit:
            until = row.window_start + self._window(key)
        else:
            return Refused(key.busy, MESSAGES[key.busy], retry_after_s=1)
        return Refused(key.over, MESSAGES[key.over],
                        retry_after_s=max(1, math.ceil((until - now).total_seconds())))

    async def prune(self, conn: AsyncConnection, now: datetime) -> int:
        """Forget counters untouched for PRUNE_AFTER (longer than any key's window, back-off or
        lease), so that the table holds only recent attempts. Run by the housekeeping loop."""
        old = now - PRUNE_AFTER
        gone = await conn.execute(_A.delete().where(
            _A.c.window_start <= old, or_(_A.c.next_at.is_(None), _A.c.next_at <= now),
            or_(_A.c.busy_until.is_(None), _A.c.busy_until <= now)))
        return gone.rowcount

    async def settle(self, store: Store, keys: list[Key], now: datetime, *, succeeded: bool,
                     facility_id: str | None = None, target: str | None = None,
                     actor_id: str = "system") -> None:
        """After the work: release the lease; a success forgets the attempt, a failure
        keeps it and, past a back-off key's limit, delays the next one (alerting the
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
                    values["next_at"] = now + self.backoff(key, row.count)
                    if row.count == key.limit:
                        await alert(conn, key, row.count, now, facility_id=facility_id,
                                    actor_id=actor_id, target=target)
                if values:
                    await conn.execute(_A.update().where(_A.c.key == key.name).values(**values))
