"""Graceful drain: how `kinwire serve` stops on SIGTERM (or Ctrl-C) without hurting anyone.

1. /readyz answers 503 `draining` from now on (a balancer that probes it stops sending here);
2. the listening socket closes: no new connections (nginx sends new ones to the others);
3. every WebSocket is closed with 1012 "service restart", so that clients reconnect, through
   the balancer, to another process; their visits pause until they rejoin there;
4. the visit meters stop and release their broker leases at once, and say so on the meters
   channel, so that another process takes each meter over within milliseconds instead of
   after the lease expires (signalling/meters.py);
5. HTTP requests in flight, and any that arrive on connections already open, are served
   until none is left or `KINWIRE_DRAIN_TIMEOUT_S` passes;
6. then the usual shutdown: the remaining connections close, the relay, broker and database
   are stopped, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from server.http.routing import WS_PATH  # sockets are closed with 1012, not waited for
from server.startup import listen_error

log = logging.getLogger("kinwire.drain")


class Drain:
    """The drain's state, kept on the app: the flag /readyz reads and the requests in flight
    (WebSockets excluded)."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle: asyncio.Event | None = None
        self.steps: list[Callable[[], Awaitable[None]]] = []  # run in order when it begins

    async def begin(self) -> None:
        self.draining = True
        for step in self.steps:
            try:
                await step()
            except Exception:  # the next steps and the requests in flight still matter
                log.exception("drain step %s failed", getattr(step, "__name__", step))

    @web.middleware
    def middleware(self, request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> Awaitable[web.StreamResponse]:
        if request.path == WS_PATH:
            return handler(request)  # not awaited here: see server/http/routing.py WS_PATH
        return self._counted(request, handler)

    async def _counted(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        self.in_flight += 1
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when no request is in flight, within `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.in_flight > 0:
            self._idle = asyncio.Event()
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), left)
        return True


DRAIN = web.AppKey("drain", Drain)


async def serve(app: web.Application, host: str, port: int, *, timeout_s: float,
                on_listening: Callable[[list], None] | None = None, **runner_args) -> None:
    """Run `app` until SIGTERM or SIGINT, then drain it: the steps create_app registered
    (close the sockets, hand the meters over), then in-flight requests get `timeout_s`.
    `on_listening(addresses)` runs once the port is bound (the start-up banner); a port that
    cannot be bound raises StartError, after the app's start-up is undone."""
    drain = app[DRAIN]
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, **runner_args)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise listen_error(exc, host, port) from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        # After the handlers: whoever reads the banner and at once sends SIGTERM gets a drain.
        if on_listening is not None:
            on_listening(runner.addresses)
        await stop.wait()
        started = loop.time()
        drain.draining = True
        log.info("draining: %d requests in flight", drain.in_flight)
        await site.stop()
        try:
            await asyncio.wait_for(drain.begin(), timeout_s)
        except TimeoutError:  # the requests in flight still deserve their answers
            log.error("drain: closing sockets and handing meters over took too long")
        left = timeout_s - (loop.time() - started)
        if not await drain.wait_idle(left):
            log.warning("drain: %d requests still in flight after %.1f s; cutting them",
                        drain.in_flight, timeout_s)
        log.info("drained in %.2f s", loop.time() - started)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
