"""Recordings over HTTP (docs/visits.md, "Recordings"): staff of the recording's facility and
admins list them, read one, and play its file, whole or by byte ranges (what a `<video>`
element asks for). Every request for the file is written to the audit log as
`recording.play`, with the range, before a byte is sent. Families and people are refused by
the route (403); staff of another facility are told the recording does not exist (404).
"""

from __future__ import annotations

import re

from aiohttp import web
from sqlalchemy import select

from common.errors import Refused
from server import audit
from server.auth import STAFF
from server.errors import not_found
from server.http.routing import Call, Route, json_response
from server.recordings import segments_of, view
from server.schema import recordings
from store import Record

RANGE = re.compile(r"^bytes=(\d{0,18})-(\d{0,18})$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) asked for by a Range header, or None for the whole file (no header, or one
    this does not serve: several ranges, another unit; RFC 9110 lets a server ignore those).
    Refused 416 for a range that lies outside the file."""
    match = RANGE.match(header.strip()) if header else None
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":  # the last N bytes
        last = int(match[2])
        if last == 0 or size == 0:
            raise Refused("range_not_satisfiable", "That range is outside the file.")
        return max(0, size - last), size
    start = int(match[1])
    end = size if match[2] == "" else min(size, int(match[2]) + 1)
    if start >= size or end <= start:
        raise Refused("range_not_satisfiable", "That range is outside the file.")
    return start, end


async def _visible(call: Call, recording_id: str) -> Record:
    """The recording, if the caller may see it; not_found otherwise (another facility's)."""
    async with call.ctx.store.read() as conn:
        row = (await conn.execute(select(recordings).where(
            recordings.c.id == recording_id))).first()
    me = call.me
    if row is None or (me.role != "admin" and row.facility_id != me.facility_id):
        raise not_found("The recording")
    return row


async def list_recordings(call: Call) -> web.Response:
    """Recordings of the caller's facility (admins: all, or ?facility_id=), newest first."""
    me, query = call.me, call.request.query
    facility_id = me.facility_id if me.role == "staff" else query.get("facility_id") or None
    limit = call.query_int("limit", lo=1, hi=call.ctx.settings.page_size_max) or 50
    statement = select(recordings)
    if facility_id is not None:
        statement = statement.where(recordings.c.facility_id == facility_id)
    if query.get("visit_id"):
        statement = statement.where(recordings.c.visit_id == query["visit_id"])
    if query.get("before"):
        statement = statement.where(recordings.c.id < query["before"])
    async with call.ctx.store.read() as conn:
        rows = (await conn.execute(statement.order_by(recordings.c.id.desc())
                                   .limit(limit))).all()
    return json_response({"recordings": [view(r) for r in rows],
                          "next_before": rows[-1].id if len(rows) == limit else None})


async def get_recording(call: Call) -> web.Response:
    """One recording's record with its segments (staff of its facility, admins)."""
    row = await _visible(call, call.match("recording_id"))
    async with call.ctx.store.read() as conn:
        segments = await segments_of(conn, row.id)
    return json_response({"recording": view(row, segments)})


async def play_recording(call: Call) -> web.Response:
    """One segment's file (video/webm; ?segment=n, the first by default), whole or one byte
    range; every request is audited."""
    row = await _visible(call, call.match("recording_id"))
    number = call.query_int("segment", lo=1, hi=10_000) or 1
    async with call.ctx.store.read() as conn:
        segment = next((s for s in await segments_of(conn, row.id) if s.segment == number),
                       None)
    if segment is None:
        raise not_found("The recording's segment")
    blobs = call.ctx.recordings.blobs
    size = await blobs.size(segment.location)
    if size is None:
        raise not_found("The recording's file")
    asked = byte_range(call.request.headers.get("Range"), size)
    start, end = asked or (0, size)
    me = call.me
    async with call.ctx.store.write() as conn:
        await audit.record(conn, actor_id=me.account_id, actor_role=me.role,
                           action="recording.play", facility_id=row.facility_id,
                           target=row.id, at=call.now(),
                           details={"visit_id": row.visit_id, "segment": number,
                                    "range": [start, end]})
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(end - start),
               "Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
    if asked is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    return web.Response(status=206 if asked else 200, content_type=segment.content_type,
                        headers=headers, body=blobs.read(segment.location, start, end))


ROUTES = [
    Route("GET", "/recordings", list_recordings, STAFF,
          query={"facility_id": "admin only: one facility", "visit_id": "one visit's",
                 "before": "id of the last recording seen", "limit": "page size"}),
    Route("GET", "/recordings/{recording_id}", get_recording, STAFF),
    Route("GET", "/recordings/{recording_id}/media", play_recording, STAFF,
          query={"segment": "which segment's file (1, the first, by default)"}),
]
