"""The append-only audit log: every staff and admin action, written in the action's own
transaction (so an action without its record cannot happen). Rows are never updated or
deleted; a database trigger refuses it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.store.schema import audit_log


async def record(conn: AsyncConnection, *, actor_id: str, actor_role: str, action: str,
                 at: datetime, facility_id: str | None = None, target: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
    await conn.execute(audit_log.insert().values(
        at=at, actor_id=actor_id, actor_role=actor_role, facility_id=facility_id,
        action=action, target=target, details=details or {}))


async def entries(conn: AsyncConnection, *, facility_id: str | None, before: int | None,
                  limit: int) -> list[dict[str, Any]]:
    query = select(audit_log)
    if facility_id is not None:
        query = query.where(audit_log.c.facility_id == facility_id)
    if before is not None:
        query = query.where(audit_log.c.seq < before)
    rows = await conn.execute(query.order_by(audit_log.c.seq.desc()).limit(limit))
    return [{"seq": r.seq, "at": r.at.isoformat(), "actor_id": r.actor_id,
             "actor_role": r.actor_role, "facility_id": r.facility_id, "action": r.action,
             "target": r.target, "details": r.details} for r in rows]
