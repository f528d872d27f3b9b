"""POST /internal/janus/events: where the Janus servers' sample event handler posts (deploy/janus/
janus.eventhandler.sampleevh.jcfg.in), mounted only with KINWIRE_MEDIA_ENGINE=janus.

Internal: not under /api/v1, and no session or role; HTTP basic auth with user `janus` and
KINWIRE_JANUS_EVENTS_PASSWORD instead. A missing or wrong credential is refused 401 and logged
with the client's address (never the credential); a body over KINWIRE_JANUS_EVENTS_BYTES_MAX is
refused 413; anything that is not JSON events 400. Accepted events go to the process's
handles shared by every process (signalling/janus_presence.py: the `janus_handles` table, and
each touched relay-mode visit's server view recorded with visits.observe) in one transaction;
then the visit's meter is woken and, when the call went live, both parties are told. The reply
is 204 after the commit, so Janus's next post (it sends one at a time) sees this one's state.
`PRESENCE` on the app holds no handles, only the observations this process received
(`recent`, to look at: tests, debugging).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging

from aiohttp import web

from server import calls
from server.context import Context
from server.events import Outbox
from server.http.edge import read_body
from signalling import janus_presence
from signalling.janus_events import BadEvents, Presence, parse

log = logging.getLogger("kinwire.janus")
PATH = "/internal/janus/events"
USER = "janus"
PRESENCE = web.AppKey("janus_presence", Presence)


def _authorized(header: str, password: str) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        user, sep, given = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both compared in constant time, and both always, so timing tells nothing of either.
    ok_user = hmac.compare_digest(user.encode(), USER.encode())
    ok_password = hmac.compare_digest(given.encode(), password.encode())
    return bool(sep) and ok_user and ok_password


def _refuse(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="kinwire-janus-events"'} if status == 401 else {}
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def _too_large(request: web.Request, limit: int) -> web.Response:
    # Janus retries a refused post a few times, then drops its events: say so, loudly.
    log.warning("janus events: refused a post of more than %d bytes from %s "
                "(KINWIRE_JANUS_EVENTS_BYTES_MAX); its events are lost", limit, request.remote)
    return _refuse(413, "too_large", f"At most {limit} bytes of events a post.")


def install(app: web.Application, ctx: Context) -> Presence:
    settings = ctx.settings
    presence = Presence(settings.janus_token_secret)
    app[PRESENCE] = presence
    limit = settings.janus_events_bytes_max

    async def events(request: web.Request) -> web.Response:
        if not _authorized(request.headers.get("Authorization", ""),
                           settings.janus_events_password):
            log.warning("janus events: refused a post from %s (%s credential)", request.remote,
                        "a wrong" if "Authorization" in request.headers else "no")
            return _refuse(401, "unauthorized", "A Janus event handler's credential is needed.")
        if (request.content_length or 0) > limit:
            return _too_large(request, limit)

        async def bounded() -> bytes:
            body = await request.content.read(limit + 1)
            while len(body) <= limit and not request.content.at_eof():
                more = await request.content.read(limit + 1 - len(body))
                if not more:
                    break
                body += more
            return body

        body = await read_body(request, settings.http_body_timeout_s, bounded)
        if len(body) > limit:
            return _too_large(request, limit)
        try:
            parsed = parse(json.loads(body))
        except (ValueError, BadEvents) as exc:  # json's errors are ValueErrors too
            log.warning("janus events: a malformed post from %s (%s)", request.remote,
                        type(exc).__name__)
            return _refuse(400, "invalid_input", "Post Janus events: a JSON object or array.")
        sink, now = Outbox(), ctx.clock()
        async with ctx.store.write() as conn:
            seen, changes = await janus_presence.record(
                conn, sink, presence, parsed, now,
                ctx.janus.name_of if ctx.janus is not None else lambda server: None)
        presence.recent.extend(seen)  # committed: a look at them finds the table agrees
        await sink.signal(ctx.broker)
        if seen:
            log.debug("janus events: %d events, %d observations", len(parsed), len(seen))
        for change in changes:
            before, after = change.before, change.after
            if (before.server_media, before.server_node) != (after.server_media,
                                                             after.server_node):
                await ctx.meters.poke(change.visit_id)
            if after.status == "live" and before.status != "live":
                for party in (after.family_id, after.person_id):
                    await calls.push_live(ctx.broker, party, "visit.live",
                                          {"visit_id": change.visit_id})
        return web.Response(status=204)

    app.router.add_post(PATH, events)
    return presence
