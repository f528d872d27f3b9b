"""Photos, messages and the review queue over HTTP. The WebSocket ops call the same services."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import Field
from sqlalchemy import select

from common.errors import Refused
from server import messages, review
from server import photos as photo_files
from server.attempts import Key
from server.auth import ANY_SESSION, PARTIES, STAFF
from server.errors import not_found
from server.events import Outbox
from server.facilities import Strict
from server.http.edge import read_body
from server.http.routing import Call, Route, json_response
from server.photos import sniff
from server.schema import photos
from store.ids import new_id


class MessageIn(Strict):
    to: Annotated[str, Field(min_length=1, max_length=32)]
    body: Annotated[str, Field(max_length=1_000_000)] = ""
    photo_ids: Annotated[list[Annotated[str, Field(min_length=1, max_length=32)]],
                         Field(max_length=50)] = Field(default_factory=list)
    cod: bool = False


class RejectIn(Strict):
    reason: Annotated[str, Field(min_length=1, max_length=500)]


MessageId = Annotated[str, Field(min_length=1, max_length=32)]


class DecisionsIn(Strict):
    decision: Literal["approve", "reject"]
    message_ids: Annotated[list[MessageId], Field(min_length=1, max_length=100)]
    reason: Annotated[str, Field(max_length=500)] = ""


def draft_from(call_settings, body: MessageIn, key: str) -> messages.Draft:
    """Shared by POST /messages and the message.send op: the same limits either way."""
    if len(body.body) > call_settings.message_chars_max:
        raise Refused("too_long",
                       f"A message holds at most {call_settings.message_chars_max} characters.")
    if len(body.photo_ids) > call_settings.photos_per_message_max:
        raise Refused("too_many_photos",
                       f"At most {call_settings.photos_per_message_max} photos a message.")
    if len(set(body.photo_ids)) != len(body.photo_ids):
        raise Refused("invalid_photo", "The same photo is attached twice.")
    if not body.body.strip() and not body.photo_ids:
        raise Refused("empty_message", "Write something or attach a photo.")
    return messages.Draft(body.to, body.body, tuple(body.photo_ids), body.cod, key)


async def send_message(call: Call) -> web.Response:
    """Send a message (charged now, or on first open when COD)."""
    draft = draft_from(call.ctx.settings, call.body, call.idempotency_key())
    outbox = Outbox()
    now = call.now()
    # Group commit (store/group.py): answered only after the shared COMMIT.
    shown = await call.ctx.store.write_grouped(
        lambda conn: messages.send(conn, outbox, call.me, draft, now))
    await outbox.signal(call.ctx.broker)
    return json_response({"message": shown}, 201)


async def list_messages(call: Call) -> web.Response:
    """Your inbox or sent messages, newest first (?folder=inbox|sent&before=<id>; ?with=<account
    id> keeps the conversation with that person)."""
    folder = call.request.query.get("folder", "inbox")
    if folder not in ("inbox", "sent"):
        raise Refused("invalid_input", "folder is inbox or sent")
    before = call.request.query.get("before") or None
    with_id = call.request.query.get("with") or None
    if with_id is not None and len(with_id) > 32:
        raise Refused("invalid_input", "with is an account id")
    limit = call.query_int("limit", lo=1, hi=call.ctx.settings.page_size_max) or 50
    async with call.ctx.store.read() as conn:
        rows = await messages.listing(conn, call.me, folder, before, limit, with_id)
    return json_response({"messages": rows,
                          "next_before": rows[-1]["id"] if len(rows) == limit else None})


async def open_message(call: Call) -> web.Response:
    """Open a message: a read receipt; pays a COD message once."""
    outbox = Outbox()
    async with call.ctx.store.write() as conn:
        shown = await messages.open_message(conn, outbox, call.me, call.match("message_id"),
                                            call.now())
    await outbox.signal(call.ctx.broker)
    return json_response({"message": shown})


async def remove_message(call: Call) -> web.Response:
    """Remove a message from your own view (the facility's record keeps it)."""
    async with call.ctx.store.write() as conn:
        await messages.remove(conn, call.me, call.match("message_id"))
    return json_response({"ok": True})


async def review_queue(call: Call) -> web.Response:
    """Held messages of your facility, oldest first; ?kind= and ?older_than_minutes= filter."""
    me = call.me
    facility_id = me.facility_id if me.role == "staff" else call.request.query.get("facility_id")
    if not facility_id:
        raise Refused("invalid_input", "facility_id is required for admins")
    kind = call.request.query.get("kind") or None
    if kind not in (None, "photos", "text", "keyword"):
        raise Refused("invalid_input", "kind is photos, text or keyword")
    age = call.query_int("older_than_minutes", lo=0, hi=366 * 24 * 60)
    held_before = call.now() - timedelta(minutes=age) if age else None
    async with call.ctx.store.read() as conn:
        rows = await review.queue(conn, me, facility_id, call.ctx.settings.page_size_max,
                                  kind=kind, held_before=held_before)
    return json_response({"messages": rows})


async def decide_many(call: Call) -> web.Response:
    """Approve or reject a selection of held messages (at most 100), each in its own
    transaction: one already decided (by anyone, or by a retry of this request) is reported
    and left alone, never decided or refunded twice."""
    body: DecisionsIn = call.body
    reason = body.reason.strip()
    if body.decision == "reject" and not reason:
        raise Refused("invalid_input", "reason: a rejection needs a reason")
    results = []
    for message_id in dict.fromkeys(body.message_ids):  # each once, in the order given
        outbox = Outbox()
        try:
            async with call.ctx.store.write() as conn:
                if body.decision == "approve":
                    shown = await review.approve(conn, outbox, call.me, message_id, call.now())
                else:
                    shown = await review.reject(conn, outbox, call.me, message_id, reason,
                                                call.now())
        except Refused as exc:
            if exc.code not in ("already_reviewed", "not_found"):
                raise
            results.append({"id": message_id, "outcome": exc.code, "message": exc.message})
            continue
        await outbox.signal(call.ctx.broker)
        results.append({"id": message_id, "outcome": shown["status"]})
    return json_response({"results": results})


async def approve_message(call: Call) -> web.Response:
    """Approve a held message: it is delivered now."""
    outbox = Outbox()
    async with call.ctx.store.write() as conn:
        shown = await review.approve(conn, outbox, call.me, call.match("message_id"),
                                     call.now())
    await outbox.signal(call.ctx.broker)
    return json_response({"message": shown})


async def reject_message(call: Call) -> web.Response:
    """Reject a held message with a reason; whoever paid gets the credits back."""
    outbox = Outbox()
    async with call.ctx.store.write() as conn:
        shown = await review.reject(conn, outbox, call.me, call.match("message_id"),
                                    call.body.reason, call.now())
    await outbox.signal(call.ctx.broker)
    return json_response({"message": shown})


async def _read_upload(call: Call) -> bytes:
    limit = call.ctx.settings.photo_bytes_max
    if (call.request.content_length or 0) > limit + 64 * 1024:
        raise Refused("too_large", f"A photo may be at most {limit} bytes.")
    try:
        return await read_body(call.request, call.ctx.settings.http_body_timeout_s,
                               lambda: _read_file_part(call, limit))
    except (ValueError, AssertionError, KeyError, HttpProcessingError):
        # A malformed form (bad boundary, part headers that are not HTTP headers) is the
        # client's mistake, not ours: found by tests/integration/test_schemathesis.py as a 500.
        raise Refused("bad_request", "Send the photo as multipart/form-data.") from None


async def _read_file_part(call: Call, limit: int) -> bytes:
    reader = await call.request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            raise Refused("invalid_input", "The form has no `file` part.")
        if isinstance(part, BodyPartReader) and part.name == "file":  # not a nested form
            break
    data = bytearray()
    while chunk := await part.read_chunk(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise Refused("too_large", f"A photo may be at most {limit} bytes.")
        if len(data) >= 16 and len(data) - len(chunk) < 16:
            sniff(bytes(data[:16]))  # refuse a non-image before reading the rest
    return bytes(data)


async def upload_photo(call: Call) -> web.Response:
    """Upload a photo (multipart `file`, JPEG or PNG); re-encoded without metadata."""
    ctx, me, now = call.ctx, call.me, call.now()
    # Counted before any byte is read or decoded, and one at a time per user: the hour's
    # quota holds against uploads sent all at once (server/attempts.py).
    keys = [Key(f"upload:{me.account_id}", limit=ctx.settings.photo_uploads_per_hour_max,
                single=True, window_s=3600, busy="upload_in_progress", over="too_many_uploads")]
    await ctx.login_limiter.reserve(ctx.store, keys, now)
    try:
        data = await _read_upload(call)
        clean = await ctx.photo_work.clean(data, pixels_max=ctx.settings.photo_pixels_max,
                                           side_px_max=ctx.settings.photo_side_px_max)
        photo_id = new_id("pho")
        await photo_files.store(ctx.blobs, photo_id, clean)
        async with ctx.store.write() as conn:
            await conn.execute(photos.insert().values(
                id=photo_id, owner_id=me.account_id, width=clean.width, height=clean.height,
                bytes=len(clean.full), created_at=now))
    finally:
        # Releases the one-at-a-time lease; the upload stays counted, done or refused.
        await ctx.login_limiter.settle(ctx.store, keys, now, succeeded=False)
    return json_response({"photo_id": photo_id, "width": clean.width,
                          "height": clean.height}, 201)


async def _may_see_photo(call: Call, photo_id: str) -> None:
    me = call.me
    async with call.ctx.store.read() as conn:
        row = (await conn.execute(select(photos).where(photos.c.id == photo_id))).first()
        if row is None:
            raise not_found("The photo")
        if row.owner_id == me.account_id:
            return
        if row.message_id is None:
            raise not_found("The photo")
        message = await messages.get(conn, row.message_id)
    if me.role in ("staff", "admin"):
        if me.role == "admin" or message.facility_id == me.facility_id:
            return
    elif me.account_id == message.recipient_id and message.status == "delivered" \
            and (not message.cod or message.paid_by is not None):
        return
    raise not_found("The photo")


async def _serve_photo(call: Call, thumb: bool) -> web.Response:
    photo_id = call.match("photo_id")
    await _may_see_photo(call, photo_id)
    data = await photo_files.load(call.ctx.blobs, photo_id, thumb)
    # A kiosk or tablet is shared by the people of a facility: its browser keeps no copy that
    # the next person signed in could be shown from the cache.
    cache = "private, no-store" if call.me.role == "person" else "private, max-age=3600"
    return web.Response(body=data, content_type="image/jpeg",
                        headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})


async def get_photo(call: Call) -> web.Response:
    """A photo, to its owner, the message's recipient once visible, and the facility's staff."""
    return await _serve_photo(call, thumb=False)


async def get_thumb(call: Call) -> web.Response:
    """A photo's thumbnail (same rules as the photo)."""
    return await _serve_photo(call, thumb=True)


ROUTES = [
    Route("POST", "/photos", upload_photo, PARTIES),
    Route("GET", "/photos/{photo_id}", get_photo, ANY_SESSION),
    Route("GET", "/photos/{photo_id}/thumb", get_thumb, ANY_SESSION),
    Route("POST", "/messages", send_message, PARTIES, body=MessageIn, idempotent=True),
    Route("GET", "/messages", list_messages, PARTIES,
          query={"folder": "inbox or sent", "before": "id of the last message seen",
                 "limit": "page size", "with": "the other party's account id"}),
    Route("POST", "/messages/{message_id}/open", open_message, PARTIES),
    Route("DELETE", "/messages/{message_id}", remove_message, PARTIES),
    Route("GET", "/review", review_queue, STAFF, query={
        "facility_id": "admins: which", "kind": "photos, text or keyword (held by a watched word)",
        "older_than_minutes": "only messages held at least this long"}),
    Route("POST", "/review/decisions", decide_many, STAFF, body=DecisionsIn),
    Route("POST", "/review/{message_id}/approve", approve_message, STAFF),
    Route("POST", "/review/{message_id}/reject", reject_message, STAFF, body=RejectIn),
]
