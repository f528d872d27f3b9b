"""A visit as clients see it, and the `visit.updated` event that tells both parties of a change.

Shared by booking (server/http/routes_visits.py) and everything else that changes a visit: whoever
changes a visit's row calls `announce` in the same transaction, then signals the outbox after
the commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from server.events import Outbox
from signalling import visits


async def announce(conn: AsyncConnection, outbox: Outbox, visit_id: str,
                   at: datetime) -> dict[str, Any]:
    """Read the visit back and write `visit.updated` to both parties' streams; the view."""
    row = await visits.get(conn, visit_id)  # VisitError not_found if it is not there
    await visits.announce(conn, outbox, row, at)
    return visits.public(row)
