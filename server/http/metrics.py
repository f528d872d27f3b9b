"""Prometheus metrics, rendered by hand in the text exposition format (version 0.0.4).

One `Metrics` object per app (built in create_app, stored on the Context as `ctx.metrics`):
no module-level registry, so two apps in one test process never share a count. Written by
hand rather than with `prometheus_client` to add no dependency for three metric kinds.

Gauges are read at scrape through collectors (an async function each); a collector that fails
leaves its sample out. Only numbers and fixed label values are exported: never a token, a
message body, an account id or a card number.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from common.broker import Broker
from store import Store

if TYPE_CHECKING:
    from server.gateway.hub import Hub

log = logging.getLogger("kinwire.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SEND_PATH = "/api/v1/messages"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENESS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

COUNTERS = {
    "kinwire_pushes_total": "Frames pushed to sockets (stored events and live frames).",
    "kinwire_messages_sent_total": "Messages accepted by POST /messages or message.send.",
    "kinwire_meter_debits_total": "Visit-minute debits by result (ok, refused, unknown).",
    "kinwire_housekeeping_batches_total": "Housekeeping transactions by job (prune, missed, "
                                          "recordings, attempts).",
    "kinwire_housekeeping_rows_total": "Rows pruned or marked by housekeeping, by job.",
    "kinwire_relay_frames_total": "Relay mode, forwarding: encoded frames by kind, consumer "
                                  "(peer, recording) and outcome (forwarded; dropped: backlog, "
                                  "awaiting_keyframe).",
    "kinwire_relay_refused_total": "Relay mode: visits that no process had room to relay "
                                   "(the join or signal answered `relay_full`).",
    "kinwire_meter_fenced_total": "Meter passes refused because another process took the "
                                  "visit's meter over (a stale lease holder; nothing written).",
    "kinwire_leases_total": "Broker lease operations by kind (meter, relay, housekeeping), op "
                            "(acquire, renew, release) and result (ok, refused, error). Redis "
                            "broker only.",
    "kinwire_broker_reconnects_total": "Broker pub/sub connections regained after a loss (per "
                                       "cluster node on a Cluster).",
    "kinwire_broker_down_seconds_total": "Seconds the broker's pub/sub connections were down "
                                         "before they were regained.",
    "kinwire_broker_publish_failures_total": "Publishes the broker refused or could not send "
                                             "(each a lost signal: clients resync).",
    "kinwire_relay_keyframe_requests_total": "Relay mode, forwarding: PLIs sent to a party for "
                                             "a consumer that needs a keyframe.",
}
HISTOGRAMS = {
    "kinwire_send_seconds": ("Latency of POST /messages and message.send.", LATENCY_BUCKETS),
    "kinwire_meter_lateness_seconds": ("How late a meter's wake-up was handled.",
                                       LATENESS_BUCKETS),
    "kinwire_db_pool_wait_seconds": ("How long each database transaction waited for its "
                                     "connection (pool, new connection; SQLite: the writer).",
                                     LATENCY_BUCKETS),
    "kinwire_gc_full_seconds": ("Full (generation 2) garbage collections: each stops the "
                                "process for this long.", PAUSE_BUCKETS),
}
GAUGES = {
    "kinwire_sockets": "Open WebSockets on this process.",
    "kinwire_review_queue_depth": "Messages held for review (all facilities).",
    "kinwire_broker_up": "1 when the broker answered a ping at scrape, else 0.",
    "kinwire_asyncio_tasks": "asyncio tasks alive in this process (a leak grows it).",
    "kinwire_housekeeping_holder": "1 while this process holds the housekeeping lease.",
    "kinwire_relay_visits": "Relay mode: visits this process relays (or is taking on).",
    "kinwire_relay_capacity": "Relay mode: the most visits this process relays "
                              "(KINWIRE_RELAY_CAPACITY).",
}

Labels = tuple[tuple[str, str], ...]


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = {name: {} for name in COUNTERS}
        self._histograms = {name: _Histogram(b) for name, (_, b) in HISTOGRAMS.items()}
        self._collectors: dict[str, Callable[[], Awaitable[float]]] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self._counters[name]
        series[key] = series.get(key, 0.0) + amount

    def observe(self, name: str, seconds: float) -> None:
        self._histograms[name].observe(seconds)

    def collect(self, name: str, read: Callable[[], Awaitable[float]]) -> None:
        assert name in GAUGES, name
        self._collectors[name] = read

    def counter_value(self, name: str, **labels: str) -> float:
        """One counter's value by its labels: what the tests read to check what was counted."""
        return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    async def render(self) -> str:
        lines: list[str] = []
        for name, doc in GAUGES.items():
            read = self._collectors.get(name)
            if read is None:
                continue
            try:
                value = float(await read())
            except Exception:
                log.warning("metric %s could not be read", name)
                continue
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {_num(value)}"]
        for name, doc in COUNTERS.items():
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
            series = self._counters[name] or {(): 0.0}
            for labels, value in sorted(series.items()):
                lines.append(f"{name}{_labels(labels)} {_num(value)}")
        for name, (doc, _) in HISTOGRAMS.items():
            h = self._histograms[name]
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} histogram"]
            for bound, count in zip(h.buckets, h.counts, strict=True):
                lines.append(f'{name}_bucket{{le="{_num(bound)}"}} {count}')
            lines += [f'{name}_bucket{{le="+Inf"}} {h.count}', f"{name}_sum {_num(h.sum)}",
                      f"{name}_count {h.count}"]
        return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels) + "}"


def install(app: web.Application, metrics: Metrics, *, hub: Hub, store: Store,
            broker: Broker, ping_timeout_s: float = 0.5) -> None:
    """Register the scrape-time gauges and GET /metrics (unauthenticated: keep it off the
    public internet; see docs/operations.md)."""
    from sqlalchemy import func, select

    from server.schema import messages as messages_table

    async def sockets() -> float:
        return hub.count()

    async def review_queue_depth() -> float:
        async with store.read() as conn:
            return (await conn.execute(select(func.count()).select_from(messages_table)
                                       .where(messages_table.c.status == "held"))).scalar_one()

    async def asyncio_tasks() -> float:
        return len(asyncio.all_tasks())

    async def broker_up() -> float:
        try:
            await asyncio.wait_for(broker.ping(), ping_timeout_s)
        except Exception:
            return 0
        return 1

    # Full collections scan every live object, each socket's included: with many sockets
    # they are the process's longest pauses (docs/BENCHMARKS.md, "Fan-out"), so measure them.
    started: list[float] = []

    def gc_timer(phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            metrics.observe("kinwire_gc_full_seconds", time.perf_counter() - started.pop())

    async def gc_timing(app: web.Application) -> AsyncIterator[None]:
        gc.callbacks.append(gc_timer)
        yield
        gc.callbacks.remove(gc_timer)

    app.cleanup_ctx.append(gc_timing)
    metrics.collect("kinwire_sockets", sockets)
    metrics.collect("kinwire_review_queue_depth", review_queue_depth)
    metrics.collect("kinwire_broker_up", broker_up)
    metrics.collect("kinwire_asyncio_tasks", asyncio_tasks)

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=(await metrics.render()).encode(),
                            headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/metrics", scrape)


def middleware(metrics: Metrics) -> Any:
    """Times POST /messages and counts the accepted ones (2xx, replays included)."""

    @web.middleware
    def send_metrics(request: web.Request, handler: Any) -> Any:
        if request.method != "POST" or request.path != SEND_PATH:
            return handler(request)  # not awaited here: see server/http/routing.py WS_PATH
        return timed(request, handler)

    async def timed(request: web.Request, handler: Any) -> web.StreamResponse:
        start = time.perf_counter()
        response = await handler(request)
        metrics.observe("kinwire_send_seconds", time.perf_counter() - start)
        if 200 <= response.status < 300:
            metrics.inc("kinwire_messages_sent_total")
        return response

    return send_metrics
