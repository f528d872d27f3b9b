"""Password reset by email, and a family's email notification choices and unsubscribe link."""

from __future__ import annotations

import html
import logging
from typing import Literal

from aiohttp import web
from pydantic import Field

from common.errors import Refused
from server import calls, mail, mail_words, push, resets
from server.attempts import Key
from server.auth import FAMILY
from server.facilities import Strict
from server.http.routes_auth import Email, Password
from server.http.routing import ANYONE, Call, Route, json_response

log = logging.getLogger("kinwire.mail")

RESET_WINDOW_S = 3600.0


class ResetIn(Strict):
    email: Email


class ResetConfirmIn(Strict):
    token: str = Field(min_length=20, max_length=200)
    password: Password


class PrefsIn(Strict):
    kinds: dict[str, bool] = Field(default_factory=dict, max_length=len(mail.KINDS))
    # The language the family's emails are written in (server/mail_words.py); the family app
    # sends the one it runs in.
    language: Literal[mail_words.LANGUAGES] | None = None


async def reset_request(call: Call) -> web.Response:
    """Ask for a password-reset link by email (answers the same whether the account exists)."""
    body: ResetIn = call.body
    ctx, now = call.ctx, call.now()
    if not ctx.settings.mail_enabled:
        raise Refused("email_off", "Email is not set up on this service; ask the facility "
                      "or the operator to reset your password.")
    per = ctx.settings.password_resets_per_hour
    # A flood from one address is refused outright (that says nothing about any account)...
    await ctx.login_limiter.reserve(ctx.store, [Key(f"reset-ip:{call.address}", limit=per * 10,
                                                    window_s=RESET_WINDOW_S)], now)
    # ...while one address's mailbox gets at most `per` links an hour, answered the same past
    # it, whether the address has an account or not: the answer never tells.
    try:
        await ctx.login_limiter.reserve(ctx.store, [Key(f"reset:{body.email}", limit=per,
                                                        window_s=RESET_WINDOW_S)], now)
    except Refused:
        return json_response(_same(ctx.settings.password_reset_ttl_s), 202)
    async with ctx.store.write() as conn:
        await resets.request(conn, body.email, now=now, ttl_s=ctx.settings.password_reset_ttl_s,
                             link_base=ctx.settings.public_url)
    if ctx.mail_sender is not None:
        ctx.mail_sender.wake.set()
    return json_response(_same(ctx.settings.password_reset_ttl_s), 202)


def _same(ttl_s: int) -> dict:
    return {"ok": True, "message": "If an account uses that address, we sent it a link to set "
            f"a new password. It works once, within {ttl_s // 60} minutes."}


async def reset_confirm(call: Call) -> web.Response:
    """Set a new password with the emailed one-time token; every session of the account ends."""
    body: ResetConfirmIn = call.body
    ctx, now = call.ctx, call.now()
    hashed = await ctx.passwords.hash(body.password)  # off the loop, before the transaction
    async with ctx.store.write() as conn:
        account_id, revoked = await resets.use(conn, body.token, hashed, now)
    await calls.close_revoked(ctx.broker, account_id, revoked)
    return json_response({"ok": True})


async def get_prefs(call: Call) -> web.Response:
    """The caller's email notification choices."""
    async with call.ctx.store.write() as conn:
        chosen = await mail.prefs(conn, call.me.account_id, call.now())
        language = await mail.language_of(conn, call.me.account_id, call.now())
    return json_response({"email": call.ctx.settings.mail_enabled, "kinds": chosen,
                          "labels": mail.KINDS, "language": language})


async def put_prefs(call: Call) -> web.Response:
    """Choose which email notifications to get."""
    body: PrefsIn = call.body
    unknown = sorted(set(body.kinds) - set(mail.KINDS))
    if unknown:
        raise Refused("invalid_input", f"kinds: unknown kind {unknown[0]!r}")
    async with call.ctx.store.write() as conn:
        chosen = await mail.set_prefs(conn, call.me.account_id, body.kinds, call.now())
        if body.language is not None:
            await mail.set_language(conn, call.me.account_id, body.language, call.now())
        language = await mail.language_of(conn, call.me.account_id, call.now())
    return json_response({"email": call.ctx.settings.mail_enabled, "kinds": chosen,
                          "labels": mail.KINDS, "language": language})


def _page(title: str, text: str, form: bool = False) -> web.Response:
    button = ('<form method="post"><button type="submit">Unsubscribe from all Kinwire '
              'email</button></form>') if form else ""
    return web.Response(
        text=f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
             f'content="width=device-width,initial-scale=1"><title>{html.escape(title)}</title>'
             f'<link rel="stylesheet" href="/static/css/app.css"></head><body><main>'
             f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{button}</main>"
             "</body></html>", content_type="text/html")


async def unsubscribe_page(call: Call) -> web.Response:
    """The unsubscribe link's page: a button that turns every notification email off (a GET
    changes nothing, so a mail scanner that follows links unsubscribes nobody)."""
    return _page("Unsubscribe", "Stop every Kinwire notification email to this address? "
                 "You can turn them back on in the app's settings.", form=True)


async def unsubscribe(call: Call) -> web.Response:
    """Turn every notification email off, by the key an email's link carries (also RFC 8058
    one-click from a mail client)."""
    key = call.request.query.get("key", "")
    done = False
    if 20 <= len(key) <= 64:
        async with call.ctx.store.write() as conn:
            done = await mail.unsubscribe(conn, key, call.now())
    if not done:
        return _page("Link not valid", "This unsubscribe link is not valid. Sign in and "
                     "choose your emails in the settings.")
    return _page("Unsubscribed", "You will get no more Kinwire notification email. You can "
                 "turn them back on in the app's settings.")


class PushKeys(Strict):
    p256dh: str = Field(min_length=40, max_length=100)
    auth: str = Field(min_length=16, max_length=40)


class PushSubscriptionIn(Strict):
    endpoint: str = Field(min_length=10, max_length=1000)
    keys: PushKeys


class PushEndpointIn(Strict):
    endpoint: str = Field(min_length=10, max_length=1000)


def _vapid(call: Call) -> push.Vapid:
    if call.ctx.vapid is None:
        raise Refused("push_off", "Browser notifications are not set up on this service.")
    return call.ctx.vapid


async def push_key(call: Call) -> web.Response:
    """The server's VAPID public key, for a browser's push subscription."""
    return json_response({"public_key": _vapid(call).public_key})


async def push_subscribe(call: Call) -> web.Response:
    """Keep this browser's push subscription: notifications the family chose come here too."""
    _vapid(call)
    body: PushSubscriptionIn = call.body
    async with call.ctx.store.write() as conn:
        await push.subscribe(conn, call.me.account_id, body.endpoint, body.keys.p256dh,
                             body.keys.auth, call.now(), call.ctx.settings.push_services)
    return json_response({"ok": True})


async def push_unsubscribe(call: Call) -> web.Response:
    """Forget this browser's push subscription."""
    _vapid(call)
    body: PushEndpointIn = call.body
    async with call.ctx.store.write() as conn:
        await push.unsubscribe(conn, call.me.account_id, body.endpoint)
    return json_response({"ok": True})


ROUTES = [
    Route("GET", "/push/key", push_key, FAMILY),
    Route("POST", "/push/subscriptions", push_subscribe, FAMILY, body=PushSubscriptionIn),
    Route("POST", "/push/subscriptions/delete", push_unsubscribe, FAMILY, body=PushEndpointIn),
    Route("POST", "/auth/reset", reset_request, ANYONE, body=ResetIn),
    Route("POST", "/auth/reset/confirm", reset_confirm, ANYONE, body=ResetConfirmIn),
    Route("GET", "/notifications", get_prefs, FAMILY),
    Route("PUT", "/notifications", put_prefs, FAMILY, body=PrefsIn),
    Route("GET", "/notifications/unsubscribe", unsubscribe_page, ANYONE,
          query={"key": "the key the email's link carries"}),
    Route("POST", "/notifications/unsubscribe", unsubscribe, ANYONE,
          query={"key": "the key the email's link carries"}),
]
