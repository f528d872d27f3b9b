"""Liveness, readiness and the API description: no session needed."""

from __future__ import annotations

import asyncio

from aiohttp import web

from server.http.drain import DRAIN
from server.http.routing import CONTEXT, json_response


async def healthz(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    drain = request.app.get(DRAIN)
    if drain is not None and drain.draining:  # SIGTERM received: send new work elsewhere
        return json_response({"ready": False, "checks": {"drain": "draining"}}, 503)
    checks = {}
    try:
        await asyncio.wait_for(ctx.store.ping(), timeout=2)
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; say which kind
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        await asyncio.wait_for(ctx.broker.ping(), timeout=2)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"down: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)
