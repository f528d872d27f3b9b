"""The audit log over HTTP: a page of entries as sentences, filtered, and the same as CSV.

Who reads what: staff their own facility's log, admins any one facility's (?facility_id=) or
all. Dates are the facility's calendar days (UTC for an administrator reading every facility),
so "from 5 Dec to 5 Dec" is the officer's whole day of 5 December.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from aiohttp import web

from common.errors import Refused
from server import audit, audit_text, facilities
from server.auth import STAFF
from server.errors import invalid
from server.http.routing import Call, Route, csv_download, json_response

ACTORS_MAX = 200
QUERY = {"actor_id": "only this actor's entries", "action": "only this action (e.g. visit.end)",
         "from": "first day, YYYY-MM-DD, at the facility", "to": "last day, YYYY-MM-DD, inclusive",
         "facility_id": "admin only: one facility"}


def _day(call: Call, name: str, zone: ZoneInfo) -> datetime | None:
    raw = call.request.query.get(name)
    if not raw:
        return None
    try:
        day = date.fromisoformat(raw)
        # `to` is inclusive: the day's end is the next day's start.
        return datetime.combine(day + timedelta(days=name == "to"), time(), zone).astimezone(UTC)
    except (ValueError, OverflowError):
        raise invalid(f"{name} is a date, YYYY-MM-DD") from None


async def _where(call: Call, conn) -> tuple[audit.Filter, ZoneInfo]:
    me = call.me
    facility_id = me.facility_id if me.role == "staff" else call.request.query.get("facility_id")
    zone = ZoneInfo("UTC")
    if facility_id:
        zone = ZoneInfo((await facilities.get(conn, facility_id)).timezone)
    action = call.request.query.get("action") or None
    if action is not None and len(action) > 64:
        raise invalid("action is at most 64 characters")
    actor = call.request.query.get("actor_id") or None
    if actor is not None and len(actor) > 32:
        raise invalid("actor_id is at most 32 characters")
    where = audit.Filter(facility_id=facility_id or None, actor_id=actor, action=action,
                         since=_day(call, "from", zone), until=_day(call, "to", zone),
                         before=call.query_int("before", lo=1))
    if where.since and where.until and where.since >= where.until:
        raise invalid("from must be on or before to")
    return where, zone


async def audit_log(call: Call) -> web.Response:
    """The audit log, newest first, each entry with a sentence: staff see their facility's,
    admins any (?facility_id=) or all; filters by actor, action and days."""
    limit = call.query_int("limit", lo=1, hi=call.ctx.settings.page_size_max) or 50
    async with call.ctx.store.read() as conn:
        where, _ = await _where(call, conn)
        rows = await audit_text.described(conn, await audit.entries(conn, where, limit))
        names = audit_text.Names()
        actor_ids = await audit.actors(conn, where.facility_id, ACTORS_MAX)
        await names.load(conn, [{"actor_id": a, "target": None} for a in actor_ids])
    next_before = rows[-1]["seq"] if len(rows) == limit else None
    actors = [{"id": a, "name": names.name(a) if a != "cli" else "command line"}
              for a in actor_ids]
    return json_response({"entries": rows, "next_before": next_before, "actors": actors,
                          "actions": audit_text.ACTIONS})


async def audit_export(call: Call) -> web.Response:
    """The audit log as CSV (same readers and filters as GET /audit), newest first; refused
    when more than KINWIRE_EXPORT_ROWS_MAX entries match (narrow the range)."""
    cap = call.ctx.settings.export_rows_max
    async with call.ctx.store.read() as conn:
        where, zone = await _where(call, conn)
        rows = await audit.entries(conn, where, cap + 1)
        if len(rows) > cap:
            raise Refused("too_many_rows", f"More than {cap} entries match: choose a "
                                                 "shorter date range or a filter.")
        text = audit_text.to_csv(await audit_text.described(conn, rows), zone)
    return csv_download(text, "kinwire-audit.csv")


ROUTES = [
    Route("GET", "/audit", audit_log, STAFF,
          query={"before": "seq of the last entry seen", "limit": "page size", **QUERY}),
    Route("GET", "/audit/export", audit_export, STAFF, query=QUERY),
]
