"""The HTTP route table and the one wrapper every route goes through.

Deny by default: a Route must name the roles it admits (or ANYONE); the wrapper authenticates
the caller, refuses other roles before the handler runs, parses and validates the JSON body
against the route's pydantic model, and turns errors into the one error shape. Facility checks
need the object, so handlers make them through `Call.require_facility`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from common.errors import Refused
from server.auth import Principal, principal_for
from server.blobs import BlobUnavailable
from server.broker import BrokerUnavailable
from server.context import Context
from server.errors import forbidden, unauthorized
from server.facilities import has_nul
from server.http.edge import read_body
from server.http.errors import STATUS, status_of
from store import is_unavailable

log = logging.getLogger("kinwire.http")

ANYONE = frozenset({"anyone"})
UNAVAILABLE = {"error": {"code": "unavailable",
                         "message": "A service we depend on is not answering; try again."}}
COOKIE = "kw_session"
# A kiosk's device token as a cookie (HttpOnly, set at kiosk login): a browser kiosk then sends
# it with every request, image and socket; programs send the X-Device-Token header instead.
DEVICE_COOKIE = "kw_device"
DEVICE_HEADER = "X-Device-Token"
BIGINT_MAX = 2**63 - 1  # the largest SQL BIGINT; a larger number cannot reach the database
CONTEXT = web.AppKey("context", Context)

Handler = Callable[["Call"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    roles: frozenset[str]
    body: type[BaseModel] | None = None
    query: dict[str, str] = field(default_factory=dict)
    # True: the Idempotency-Key header is required (the request moves credits); "optional":
    # honoured when sent (POST /visits: a repeated confirmation books once), and documented
    # in the OpenAPI document as an optional header
    idempotent: bool | str = False

    @property
    def summary(self) -> str:
        return (self.handler.__doc__ or self.handler.__name__).strip().splitlines()[0]


@dataclass
class Call:
    request: web.Request
    ctx: Context
    principal: Principal | None
    body: Any
    token: str | None

    @property
    def me(self) -> Principal:
        assert self.principal is not None  # the wrapper refused anonymous callers already
        return self.principal

    def now(self) -> datetime:
        return self.ctx.clock()

    @property
    def address(self) -> str:
        """The client's address, as the proxy middleware resolved it (server/http/proxy.py)."""
        return self.request.remote or "unknown"

    def require_facility(self, facility_id: str) -> None:
        """Staff act only in their own facility; admins in all; others never."""
        me = self.me
        if me.role == "admin" or (me.role == "staff" and me.facility_id == facility_id):
            return
        raise forbidden("That belongs to another facility.")

    def match(self, name: str) -> str:
        return self.request.match_info[name]

    def query_int(self, name: str, *, lo: int = 0, hi: int | None = None) -> int | None:
        raw = self.request.query.get(name)
        if raw is None or raw == "":
            return None
        try:
            value = int(raw)
        except ValueError:
            raise Refused("invalid_input", f"{name} must be a whole number") from None
        if value < lo or value > (BIGINT_MAX if hi is None else hi):
            raise Refused("invalid_input", f"{name} is out of range")
        return value

    def idempotency_key(self) -> str:
        key = self.request.headers.get("Idempotency-Key", "")
        if not 1 <= len(key) <= 128 or not key.isprintable():
            raise Refused("idempotency_key_required",
                           "This request moves credits: send an Idempotency-Key header "
                           "of 1 to 128 printable characters.")
        return key


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


def csv_download(text: str, filename: str) -> web.Response:
    """A CSV export, saved by the browser as `filename`, never kept by a cache (it holds a
    user's records)."""
    return web.Response(text=text, content_type="text/csv", charset="utf-8", headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store"})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _token(request: web.Request) -> tuple[str | None, bool]:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Use 'Authorization: Bearer <token>'.")
        return token.strip(), False
    cookie = request.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


def device_token(request: web.BaseRequest) -> str | None:
    return request.headers.get(DEVICE_HEADER) or request.cookies.get(DEVICE_COOKIE)


def device_refused() -> Refused:
    return Refused("device_required",
                    "This kiosk session works only on its own registered device.")


def _check_origin(request: web.Request) -> None:
    # SameSite=Strict already keeps the cookie off cross-site requests; refusing a foreign
    # Origin on cookie-authenticated writes is the second lock on that door.
    origin = request.headers.get("Origin")
    if not origin or request.method in ("GET", "HEAD", "OPTIONS"):
        return
    ctx = request.app[CONTEXT]
    own = f"{request.scheme}://{request.host}"
    if origin != own and origin not in ctx.settings.allowed_origins:
        raise forbidden("Cross-site request refused.")


async def _parse_body(request: web.Request, model: type[BaseModel],
                      timeout_s: float) -> BaseModel:
    raw = await read_body(request, timeout_s)
    if not raw.strip():
        raw = b"{}"
    elif request.content_type != "application/json":
        # A form post from another site cannot send this type without a CORS preflight.
        raise Refused("unsupported_media_type",
                       "Send the body as JSON, with Content-Type: application/json.")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise Refused("malformed_json", "The request body is not valid JSON.") from None
        problems = [{"field": ".".join(str(p) for p in err["loc"]) or "(body)",
                     "problem": err["msg"]} for err in exc.errors()[:20]]
        first = problems[0]
        raise Refused("invalid_input", f"{first['field']}: {first['problem']}",
                       fields=problems) from None


def wrap(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CONTEXT]
        token, by_cookie = _token(request)
        principal = None
        if token is not None:
            async with ctx.store.read() as conn:
                principal = await principal_for(conn, token, ctx.clock())
            if principal is None and route.roles is not ANYONE:
                raise unauthorized("Your session has expired or was ended; log in again.")
            if principal is not None and not principal.device_matches(device_token(request)):
                if route.roles is not ANYONE:
                    raise device_refused()
                principal = None
        if route.roles is not ANYONE:
            if principal is None:
                raise unauthorized()
            if principal.role not in route.roles:
                raise forbidden()
        if by_cookie:
            _check_origin(request)
        # PostgreSQL cannot store or compare U+0000; bodies are checked by their models.
        if has_nul(dict(request.match_info)) or has_nul(list(request.query.items())):
            raise Refused("invalid_input", "The address may not contain NUL characters.")
        body = (await _parse_body(request, route.body, ctx.settings.http_body_timeout_s)
                if route.body else None)
        return await route.handler(Call(request, ctx, principal, body, token))

    handle.__name__ = route.handler.__name__
    return handle


# The WebSocket path. Every middleware passes it straight through without awaiting (a plain
# function returning the handler's coroutine): a middleware that awaits keeps a coroutine
# frame alive for the socket's whole life, ~0.3-0.4 KB each on every idle socket
# (docs/BENCHMARKS.md, "Idle sockets"). The socket's handler answers its own errors.
WS_PATH = "/ws"


def error_response(request: web.BaseRequest, exc: Exception) -> web.Response | None:
    """The JSON error answer for `exc` raised by a handler; None to let it propagate (an
    HTTP redirect)."""
    if isinstance(exc, Refused) and exc.code in STATUS:
        status = status_of(exc)
        response = json_response(exc.body(), status)
        if status == 408:  # the body never came: the connection is not reusable
            response.force_close()
        if status in (429, 503) and "retry_after_s" in exc.details:
            response.headers["Retry-After"] = str(exc.details["retry_after_s"])
        return response
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large",
                400: "bad_request"}.get(exc.status, "http_error")
        return json_response({"error": {"code": code, "message": exc.reason}}, exc.status)
    if is_unavailable(exc) or isinstance(exc, BrokerUnavailable | BlobUnavailable):
        # A database, broker or blob store fault, not a bug: say so, so that clients retry (with the
        # same idempotency key) instead of giving up. Only the kind is logged.
        log.warning("service unavailable on %s %s: %s", request.method,
                    request.rel_url.path, type(exc).__name__)
        response = json_response(UNAVAILABLE, 503)
        response.headers["Retry-After"] = "1"
        return response
    # Only the route is logged: bodies may carry passwords, card numbers or messages.
    log.error("unhandled error on %s %s", request.method, request.rel_url.path,
              exc_info=exc)
    return json_response({"error": {"code": "internal_error",
                                    "message": "Something went wrong on our side."}}, 500)


@web.middleware
def error_middleware(request: web.Request, handler) -> Awaitable[web.StreamResponse]:
    if request.path == WS_PATH:
        return handler(request)
    return _answering_errors(request, handler)


async def _answering_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        response = error_response(request, exc)
        if response is None:
            raise
        return response


def add_routes(app: web.Application, routes: list[Route], prefix: str = "/api/v1") -> None:
    for route in routes:
        app.router.add_route(route.method, prefix + route.path, wrap(route))
