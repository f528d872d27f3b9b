"""Connections between a family member and an incarcerated person.

Only an approved, unblocked connection lets the two message, gift or book visits. Requests,
approval and blocking arrive with the messaging work; gifts already ask this module.
"""

from __future__ import annotations

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server.store.schema import connections


async def is_approved_contact(conn: AsyncConnection, a: str, b: str) -> bool:
    c = connections
    row = (await conn.execute(select(c.c.id).where(
        or_(and_(c.c.family_id == a, c.c.person_id == b),
            and_(c.c.family_id == b, c.c.person_id == a)),
        c.c.status == "approved", c.c.blocked_by.is_(None)))).first()
    return row is not None
