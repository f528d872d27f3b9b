"""The append-only audit log: every staff and admin action, written in the action's own
transaction (so an action without its record cannot happen). Rows are never updated or
deleted; a database trigger refuses it. How an entry reads to a person: server/audit_text.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.schema import audit_log


@dataclass(frozen=True)
class Filter:
    """Which entries a reader asks for; None means any. `since` and `until` bound `at`
    (since inclusive, until exclusive); `before` pages back by seq."""
    facility_id: str | None = None
    actor_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None


async def record(conn: AsyncConnection, *, actor_id: str, actor_role: str, action: str,
                 at: datetime, facility_id: str | None = None, target: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
    await conn.execute(audit_log.insert().values(
        at=at, actor_id=actor_id, actor_role=actor_role, facility_id=facility_id,
        action=action, target=target, details=details or {}))


async def entries(conn: AsyncConnection, where: Filter, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` entries matching `where`, newest first."""
    a = audit_log.c
    query = select(audit_log)
    for column, value in ((a.facility_id, where.facility_id), (a.actor_id, where.actor_id),
                          (a.action, where.action)):
        if value is not None:
            query = query.where(column == value)
    if where.since is not None:
        query = query.where(a.at >= where.since)
    if where.until is not None:
        query = query.where(a.at < where.until)
    if where.before is not None:
        query = query.where(a.seq < where.before)
    rows = await conn.execute(query.order_by(a.seq.desc()).limit(limit))
    return [{"seq": r.seq, "at": r.at.isoformat(), "actor_id": r.actor_id,
             "actor_role": r.actor_role, "facility_id": r.facility_id, "action": r.action,
             "target": r.target, "details": r.details} for r in rows]


async def actors(conn: AsyncConnection, facility_id: str | None, limit: int) -> list[str]:
    """Who has entries in the facility's log (for a filter's choices), at most `limit`."""
    query = select(audit_log.c.actor_id).distinct()
    if facility_id is not None:
        query = query.where(audit_log.c.facility_id == facility_id)
    return list((await conn.execute(query.order_by(audit_log.c.actor_id).limit(limit))).scalars())
