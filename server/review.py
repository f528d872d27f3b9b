"""The facility's review queue: held messages, approved or rejected by its staff.

A decision is a conditional update (`WHERE status = 'held'`), so two officers deciding at once
cannot both win. A rejection returns every credit the message cost to whoever paid, as new
transfers keyed on the originals (so a retried rejection refunds once). Every decision goes to
the audit log and, live, to the sender.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import ledger
from billing.tables import ledger_transfers
from common.errors import Refused
from server import audit, messages
from server.auth import Principal
from server.events import Outbox
from server.schema import messages as messages_table
from store import Record

Kind = Literal["photos", "text", "keyword"]


async def queue(conn: AsyncConnection, staff: Principal, facility_id: str, limit: int, *,
                kind: Kind | None = None, held_before: datetime | None = None
                ) -> list[dict[str, Any]]:
    """Held messages, oldest first: only those with photos, only text, or only those a watched
    word held (`kind`), and only those held since before `held_before` (their age)."""
    m = messages_table
    query = select(m).where(m.c.facility_id == facility_id, m.c.status == "held")
    if kind == "photos":
        query = query.where(m.c.photo_count > 0)
    elif kind == "text":
        query = query.where(m.c.photo_count == 0)
    elif kind == "keyword":
        query = query.where(m.c.held_for.like("keyword:%"))
    if held_before is not None:
        query = query.where(m.c.created_at <= held_before)
    rows = list(await conn.execute(query.order_by(m.c.created_at, m.c.id).limit(limit)))
    return messages.views(rows, staff,
                          await messages.photo_ids_by_message(conn, [r.id for r in rows]))


async def _decide(conn: AsyncConnection, staff: Principal, message_id: str, status: str,
                  reason: str | None, at: datetime) -> Record:
    row = await messages.get(conn, message_id)
    if staff.role != "admin" and row.facility_id != staff.facility_id:
        raise Refused("not_found", "The message was not found.")
    decided = await conn.execute(messages_table.update().where(
        messages_table.c.id == row.id, messages_table.c.status == "held")
        .values(status=status, reviewed_by=staff.account_id, reject_reason=reason))
    if decided.rowcount != 1:
        # Read again: another officer's decision may have committed since `row` was read.
        now_status = (await messages.get(conn, row.id)).status
        raise Refused("already_reviewed", f"The message is already {now_status}.")
    await audit.record(conn, actor_id=staff.account_id, actor_role=staff.role,
                       action=f"message.{'approve' if status == 'delivered' else 'reject'}",
                       facility_id=row.facility_id, target=row.id, at=at,
                       details={"reason": reason} if reason else {})
    return await messages.get(conn, row.id)


async def approve(conn: AsyncConnection, outbox: Outbox, staff: Principal, message_id: str,
                  at: datetime) -> dict[str, Any]:
    row = await _decide(conn, staff, message_id, "delivered", None, at)
    await messages.announce(conn, outbox, row, at, new_for_recipient=True,
                            status_for_sender=True)
    return messages.view(row, staff, await messages.photo_ids_of(conn, row.id))


async def reject(conn: AsyncConnection, outbox: Outbox, staff: Principal, message_id: str,
                 reason: str, at: datetime) -> dict[str, Any]:
    row = await _decide(conn, staff, message_id, "rejected", reason, at)
    paid = list(await conn.execute(select(ledger_transfers).where(
        ledger_transfers.c.ref == row.id, ledger_transfers.c.kind.in_(("message", "photo")))))
    for t in paid:
        await ledger.transfer(conn, key=f"refund:{t.idempotency_key}", debit=t.credit_account,
                              credit=t.debit_account, amount=t.amount, kind="refund",
                              ref=row.id, at=at)
    if paid:
        payer = paid[0].debit_account
        await outbox.emit(conn, payer, "balance",
                          {"balance": await ledger.balance(conn, payer)}, at)
    await messages.announce(conn, outbox, row, at, new_for_recipient=False,
                            status_for_sender=True)
    return messages.view(row, staff, await messages.photo_ids_of(conn, row.id))
