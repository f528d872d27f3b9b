"""Sign-up, log-in (family, staff, admin by email; people by kiosk), log-out, and /me."""

from __future__ import annotations

import logging
from typing import Annotated

from aiohttp import web
from pydantic import AfterValidator, Field

from billing import ledger
from common.errors import Refused
from server import accounts, calls
from server.auth import ANY_SESSION, open_session, revoke_session
from server.facilities import Strict
from server.http.routing import (
    ANYONE,
    COOKIE,
    DEVICE_COOKIE,
    Call,
    Route,
    json_response,
)

log = logging.getLogger("kinwire.auth")


def _email(value: str) -> str:
    value = accounts.normal_email(value)
    local, at, domain = value.partition("@")
    if not at or not local or "." not in domain or domain.startswith("."):
        raise ValueError("not an email address")
    return value


def _name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be blank")
    return value


Email = Annotated[str, Field(min_length=3, max_length=254), AfterValidator(_email)]
Password = Annotated[str, Field(min_length=8, max_length=200)]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_name)]
Pin = Annotated[str, Field(pattern=r"^[0-9]{4,8}$")]  # ASCII: \d admits any script
InmateNumber = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9-]+$")]


class Signup(Strict):
    email: Email
    password: Password
    name: Name


class Login(Strict):
    email: Email
    password: Annotated[str, Field(min_length=1, max_length=200)]


class KioskLogin(Strict):
    facility_id: Annotated[str, Field(min_length=1, max_length=32)]
    inmate_number: InmateNumber
    pin: Annotated[str, Field(min_length=1, max_length=8)]


def _with_cookie(call: Call, body: dict, token: str, ttl_s: int) -> web.Response:
    response = json_response(body)
    response.set_cookie(COOKIE, token, max_age=ttl_s, httponly=True, samesite="Strict",
                        secure=call.request.secure, path="/")
    return response


async def signup(call: Call) -> web.Response:
    """Create a family account."""
    body: Signup = call.body
    hashed = await call.ctx.passwords.hash(body.password)
    async with call.ctx.store.write() as conn:
        row = await accounts.create(conn, role="family", name=body.name, email=body.email,
                                    password_hash=hashed, now=call.now())
    return json_response({"account": accounts.public(row)}, 201)


async def login(call: Call) -> web.Response:
    """Log in with email and password (family, staff, admin)."""
    body: Login = call.body
    ctx, now = call.ctx, call.now()
    keys = ctx.login_limiter.password_keys(body.email, call.address)
    await ctx.login_limiter.reserve(ctx.store, keys, now)  # counted before it is verified
    matched = False
    try:
        async with ctx.store.read() as conn:
            row = await accounts.by_email(conn, body.email)
        hashed = row.password_hash if row is not None and not row.disabled else None
        matched = await ctx.passwords.verify(hashed, body.password)
    finally:
        await ctx.login_limiter.settle(ctx.store, keys, now, succeeded=matched)
    if not matched:
        raise Refused("invalid_credentials", "The email or password is wrong.")
    async with ctx.store.write() as conn:
        token = await open_session(conn, account_id=row.id, ttl_s=ctx.settings.session_ttl_s,
                                   now=now)
    return _with_cookie(call, {"token": token, "account": accounts.public(row)}, token,
                        ctx.settings.session_ttl_s)


async def kiosk_login(call: Call) -> web.Response:
    """Log a person in on a registered kiosk or tablet (X-Device-Token, inmate number, PIN)."""
    body: KioskLogin = call.body
    ctx, now = call.ctx, call.now()
    device_token = call.request.headers.get("X-Device-Token", "")
    async with ctx.store.read() as conn:
        device = await accounts.device_for(conn, body.facility_id, device_token) \
            if 0 < len(device_token) <= 200 else None
    if device is None:  # before any PIN is tried: only a registered kiosk may guess at all
        raise Refused("unknown_device", "This device is not registered for the facility.")
    keys = ctx.login_limiter.pin_keys(body.facility_id, body.inmate_number, device.id)
    await ctx.login_limiter.reserve(ctx.store, keys, now)  # counted before it is verified
    matched = False
    try:
        async with ctx.store.read() as conn:
            row = await accounts.person_by_number(conn, body.facility_id, body.inmate_number)
        hashed = row.pin_hash if row is not None and not row.disabled else None
        matched = await ctx.passwords.verify(hashed, body.pin)
    finally:
        await ctx.login_limiter.settle(ctx.store, keys, now, succeeded=matched,
                                       facility_id=body.facility_id, actor_id=device.id,
                                       target=body.inmate_number)
    if not matched:
        raise Refused("invalid_credentials", "The inmate number or PIN is wrong.")
    ttl = ctx.settings.kiosk_session_ttl_s
    async with ctx.store.write() as conn:
        token = await open_session(conn, account_id=row.id, ttl_s=ttl, now=now,
                                   device_id=device.id)
    response = _with_cookie(call, {"token": token, "account": accounts.public(row)}, token, ttl)
    # The session is bound to this device: the browser sends this cookie with every request
    # and socket; a program sends X-Device-Token (server/http/routing.py).
    response.set_cookie(DEVICE_COOKIE, device_token, max_age=ttl, httponly=True,
                        samesite="Strict", secure=call.request.secure, path="/")
    return response


async def logout(call: Call) -> web.Response:
    """End this session now (its open sockets close too)."""
    async with call.ctx.store.write() as conn:
        await revoke_session(conn, call.me.session_id, call.now())
    await calls.close_revoked(call.ctx.broker, call.me.account_id, [call.me.session_id])
    response = json_response({"ok": True})
    response.del_cookie(COOKIE, path="/")
    response.del_cookie(DEVICE_COOKIE, path="/")
    return response


async def me(call: Call) -> web.Response:
    """The caller's account and balance."""
    async with call.ctx.store.read() as conn:
        row = await accounts.get(conn, call.me.account_id)
        balance = await ledger.balance(conn, row.id) if row.role in accounts.HOLDERS else 0
    body = {"account": accounts.public(row), "balance": balance}
    if call.me.device_id is not None:  # a kiosk or tablet session: the page's idle sign-out
        body["kiosk"] = {"idle_sign_out_s": call.ctx.settings.kiosk_idle_sign_out_s}
    return json_response(body)


ROUTES = [
    Route("POST", "/auth/signup", signup, ANYONE, body=Signup),
    Route("POST", "/auth/login", login, ANYONE, body=Login),
    Route("POST", "/auth/kiosk", kiosk_login, ANYONE, body=KioskLogin),
    Route("POST", "/auth/logout", logout, ANY_SESSION),
    Route("GET", "/me", me, ANY_SESSION),
]
