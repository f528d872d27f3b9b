"""PostgreSQL's range partitions, administered: the catalog read and the DDL that
server/event_partitions.py's policy (weeks of `events`, retention by dropping them) needs.

Names go into the SQL as identifiers, so every function here takes only names that
`PARTITION_NAME` allows (the partitions of `events`); bounds are written as UTC literals, read
in a session set to UTC (`utc`), whatever the server's TimeZone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

PARTITION_NAME = re.compile(r"events_(w\d{8}|before|default)")
_BOUND = re.compile(r"TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    upper: datetime | None  # None: the default partition (no bound)


def checked(name: str) -> str:
    """A partition's name, put into SQL as an identifier: only the names made here."""
    if not PARTITION_NAME.fullmatch(name):
        raise ValueError(f"not an events partition: {name!r}")
    return name


def _literal(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")


async def utc(conn: AsyncConnection) -> None:
    """Bounds are printed in the session's zone: read and written in UTC in this transaction."""
    await conn.execute(text("SET LOCAL TimeZone = 'UTC'"))


async def lock_timeout(conn: AsyncConnection, ms: int) -> None:
    """DDL in this transaction waits at most `ms` for its lock, then fails."""
    await conn.execute(text(f"SET LOCAL lock_timeout = {int(ms)}"))


async def partitions(conn: AsyncConnection) -> list[Partition]:
    """The partitions of `events`, oldest bound first; [] when `events` is not partitioned."""
    rows = (await conn.execute(text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass"))).all()
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        upper = None
        if match:
            upper = datetime.fromisoformat(match.group(1).replace("+00", "+00:00"))
        found.append(Partition(name, upper))
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda p: p.upper or far)


async def create(conn: AsyncConnection, name: str, lower: datetime, upper: datetime) -> None:
    """Make partition `name` of `events` for [lower, upper), with its own primary key (a
    partitioned table's keys must hold the partition key, so the parent has none)."""
    name = checked(name)
    await conn.execute(text(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF events FOR VALUES "
                            f"FROM ('{_literal(lower)}') TO ('{_literal(upper)}')"))
    await conn.execute(text(f"ALTER TABLE {name} ADD PRIMARY KEY (account_id, seq)"))


async def drop(conn: AsyncConnection, name: str) -> None:
    await conn.execute(text(f"DROP TABLE {checked(name)}"))
