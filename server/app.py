"""create_app: the one place where Kinwire is wired together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

from aiohttp import web

from billing import ledger
from billing.gateway import PaymentGateway, SandboxGateway
from server import routes_auth, routes_facilities, routes_money
from server.auth import LoginLimiter, Passwords
from server.context import Context
from server.openapi import build as build_openapi
from server.routes_ops import healthz, readyz
from server.routing import CONTEXT, Route, add_routes, error_middleware, json_response
from server.settings import Settings
from server.store import Store
from server.store.migrate import migrate
from server.store.schema import utcnow

log = logging.getLogger("kinwire")
STATIC = Path(__file__).resolve().parent.parent / "static"

ROUTES: list[Route] = [*routes_auth.ROUTES, *routes_facilities.ROUTES, *routes_money.ROUTES]


def create_app(settings: Settings, *, clock: Callable[[], datetime] = utcnow,
               gateway: PaymentGateway | None = None,
               run_migrations: bool = True) -> web.Application:
    app = web.Application(middlewares=[error_middleware],
                          client_max_size=settings.request_body_bytes_max)
    store = Store(settings.resolved_database_url, pool_size=settings.db_pool_size,
                  busy_timeout_ms=settings.db_busy_timeout_ms)
    ctx = Context(
        settings=settings, store=store, gateway=gateway or SandboxGateway(),
        passwords=Passwords(settings.argon2_time_cost, settings.argon2_memory_kib),
        login_limiter=LoginLimiter(settings.login_failures_max, settings.login_window_s),
        clock=clock)
    app[CONTEXT] = ctx

    async def database(app: web.Application) -> AsyncIterator[None]:
        if run_migrations:
            await migrate(store)
        async with store.write() as conn:
            await ledger.ensure_system_accounts(conn)
        if settings.demo:
            from server.demo import seed_demo, show_demo

            show_demo(await seed_demo(ctx))
        yield
        await store.close()

    app.cleanup_ctx.append(database)
    add_routes(app, ROUTES)
    spec = build_openapi(ROUTES)

    async def openapi(request: web.Request) -> web.Response:
        return json_response(spec)

    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if (STATIC / "index.html").exists():
        async def index(request: web.Request) -> web.FileResponse:
            return web.FileResponse(STATIC / "index.html")

        app.router.add_get("/", index)
        app.router.add_static("/static/", STATIC)
    return app
