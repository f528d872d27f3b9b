"""The statement over HTTP: lines grouped as a person reads them (server/statement.py), paged,
for a range of days, and the same range as CSV. GET /ledger keeps the raw transfers."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from aiohttp import web

from billing import ledger
from common.errors import Refused
from server import statement
from server.auth import PARTIES
from server.errors import invalid
from server.facilities import check_timezone
from server.http.routing import Call, Route, csv_download, json_response

QUERY = {"from": "first day, YYYY-MM-DD", "to": "last day, YYYY-MM-DD, inclusive",
         "tz": "the IANA zone those days are in (UTC by default)"}


def _range(call: Call) -> tuple[statement.Range, ZoneInfo]:
    q = call.request.query
    zone = ZoneInfo(check_timezone(q["tz"][:64])) if q.get("tz") else ZoneInfo("UTC")
    bounds = []
    for name, extra in (("from", 0), ("to", 1)):  # `to` is inclusive: up to the next day
        if not q.get(name):
            bounds.append(None)
            continue
        try:
            day = date.fromisoformat(q[name]) + timedelta(days=extra)
            bounds.append(datetime.combine(day, time(), zone).astimezone(UTC))
        except (ValueError, OverflowError):
            raise invalid(f"{name} is a date, YYYY-MM-DD") from None
    since, until = bounds
    if since and until and since >= until:
        raise invalid("from must be on or before to")
    return statement.Range(since, until, call.query_int("before", lo=1)), zone


async def statement_page(call: Call) -> web.Response:
    """Your statement, newest first, one line per visit, message, refund, purchase or gift."""
    where, _ = _range(call)
    limit = call.query_int("limit", lo=1, hi=call.ctx.settings.page_size_max) or 50
    async with call.ctx.store.read() as conn:
        rows = await statement.lines(conn, call.me.account_id, where, limit)
        balance = await ledger.balance(conn, call.me.account_id)
    return json_response({"lines": rows, "balance": balance,
                          "next_before": rows[-1]["seq"] if len(rows) == limit else None})


async def statement_export(call: Call) -> web.Response:
    """Your statement for a range of days as CSV; refused beyond KINWIRE_EXPORT_ROWS_MAX lines."""
    where, zone = _range(call)
    cap = call.ctx.settings.export_rows_max
    async with call.ctx.store.read() as conn:
        rows = await statement.lines(conn, call.me.account_id, where, cap + 1)
    if len(rows) > cap:
        raise Refused("too_many_rows", f"More than {cap} lines match: choose a shorter "
                                             "date range.")
    return csv_download(statement.to_csv(rows, zone), "kinwire-statement.csv")


ROUTES = [
    Route("GET", "/statement", statement_page, PARTIES,
          query={"before": "seq of the last line seen", "limit": "page size", **QUERY}),
    Route("GET", "/statement/export", statement_export, PARTIES, query=QUERY),
]
