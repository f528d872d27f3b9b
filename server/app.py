"""create_app: the one place where Kinwire is wired together."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from functools import cache
from pathlib import Path

import aiohttp
from aiohttp import web

from billing import ledger
from billing.gateway import PaymentGateway, SandboxGateway
from billing.hosted import SandboxPayments
from server import calls, events, mail, push
from server.attempts import Attempts
from server.auth import LoginLimiter, Passwords
from server.blobs.configured import open_blobs
from server.broker import Broker
from server.context import Context
from server.events import Outbox
from server.gateway.client import RESTARTING
from server.gateway.endpoint import HUB, websocket
from server.gateway.hub import Hub
from server.gateway.limits import make_limits
from server.housekeeping import Housekeeping
from server.http import (
    routes_audit,
    routes_auth,
    routes_calls,
    routes_checkout,
    routes_connections,
    routes_facilities,
    routes_mail,
    routes_messages,
    routes_money,
    routes_recordings,
    routes_statement,
    routes_visits,
)
from server.http.drain import DRAIN, Drain
from server.http.edge import handler_args, origins, security_headers
from server.http.logs import request_id_middleware
from server.http.metrics import Metrics
from server.http.metrics import install as install_metrics
from server.http.metrics import middleware as metrics_middleware
from server.http.openapi import build as build_openapi
from server.http.proxy import middleware as forwarded_middleware
from server.http.proxy import networks
from server.http.routes_ops import healthz, readyz
from server.http.routing import CONTEXT, WS_PATH, Route, add_routes, error_middleware, json_response
from server.photos import PhotoWork
from server.recordings import Recordings
from server.schema import utcnow
from server.settings import Settings
from server.startup import StartError
from signalling import visits
from signalling.meters import Meters
from signalling.relay import Relay
from signalling.relay_media import EmbeddedRelay, JanusMedia
from store import Store
from store.migrate import migrate, schema_behind
from store.safety import check_durability, check_not_copied_file

log = logging.getLogger("kinwire")
STATIC = Path(__file__).resolve().parent.parent / "static"

ROUTES: list[Route] = [*routes_auth.ROUTES, *routes_facilities.ROUTES, *routes_audit.ROUTES,
                       *routes_money.ROUTES, *routes_statement.ROUTES,
                       *routes_connections.ROUTES, *routes_messages.ROUTES,
                       *routes_visits.ROUTES, *routes_calls.ROUTES, *routes_recordings.ROUTES,
                       *routes_mail.ROUTES, *routes_checkout.ROUTES]


@cache
def openapi_document() -> dict:
    """GET /api/v1/openapi.json's document, built at its first request and kept: it depends on
    ROUTES alone, and building it (33 ms of pydantic schemas) at every app start cost each server
    start and the suite's ~700 apps."""
    return build_openapi(ROUTES)


def make_broker(settings: Settings, metrics: Metrics | None = None) -> Broker:
    if settings.redis_url:
        from server.broker.redis import RedisBroker

        return RedisBroker(settings.redis_url, metrics=metrics)
    from server.broker.memory import MemoryBroker

    return MemoryBroker()


def make_attempts(settings: Settings) -> Attempts | None:
    """Attempt counters in Redis where it is configured; else (None) the store's."""
    if not settings.redis_url:
        return None
    from server.attempts_redis import RedisAttempts

    return RedisAttempts(settings.redis_url, settings.login_window_s,
                         settings.login_backoff_base_s)


async def start_janus(ctx: Context) -> aiohttp.ClientSession:
    """KINWIRE_MEDIA_ENGINE=janus: the fleet's engine from the settings, its liveness checks
    started, and each visit's room destroyed by the process that ends it
    (signalling/janus_fleet.py), which then keeps its recording (server/janus_recordings.py).
    The embedded relay then relays no visit: the gateway gives relay-mode parties Janus's
    credentials instead (server/gateway/ops.py)."""
    from signalling.janus import JanusConfig, JanusEngine
    from signalling.janus_fleet import JanusFleet

    s = ctx.settings
    http = aiohttp.ClientSession()
    engine = JanusEngine(http, JanusConfig(
        s.janus_urls, s.janus_admin_urls, s.janus_api_secret, s.janus_admin_secret,
        s.janus_token_secret, s.janus_room_admin_key,
        s.janus_rec_dir or s.janus_recordings_dir, s.janus_public_urls))
    ctx.janus = JanusFleet(engine, ctx.store, ctx.broker,
                           node_lease_s=s.resolved_node_lease_s)
    await ctx.janus.start()
    ctx.media = JanusMedia(ctx.janus)  # the embedded relay relays none of the visits now
    assert ctx.meters is not None
    fleet, kept = ctx.janus, ctx.janus_recordings

    async def ended(visit_id: str) -> None:
        # The room first (the media cut at once), then its recording (seconds of work off the
        # loop; a failure is retried by housekeeping's sweep, server/janus_recordings.py).
        await fleet.end_visit(visit_id)
        if kept is not None:
            try:
                await kept.finish(visit_id)
            except Exception:
                log.exception("visit %s: Janus recording not kept; housekeeping retries",
                              visit_id)

    ctx.meters.on_end = ended
    return http


def create_app(settings: Settings, *, clock: Callable[[], datetime] = utcnow,
               gateway: PaymentGateway | None = None,
               run_migrations: bool = True) -> web.Application:
    # --- metrics/logs: request ids, then send timing, then the error shape (inside the
    # forwarded-client and drain middlewares, which come first) ---
    metrics = Metrics()
    drain = Drain()  # graceful drain on SIGTERM (server/http/drain.py): counts requests in flight
    # Behind nginx: the client's address and scheme from trusted proxies (server/http/proxy.py).
    app = web.Application(middlewares=[forwarded_middleware(settings.trusted_proxies),
                                       drain.middleware, request_id_middleware,
                                       metrics_middleware(metrics),
                                       error_middleware],
                          client_max_size=settings.request_body_bytes_max,
                          handler_args=handler_args(settings.http_header_timeout_s))
    # With Janus the pages call its client API themselves (static/js/janus.js).
    janus_api = (settings.janus_public_urls or settings.janus_urls) \
        if settings.media_engine == "janus" else ()
    app.on_response_prepare.append(security_headers(networks(settings.trusted_proxies),
                                                    origins(janus_api)))
    store = Store(settings.resolved_database_url, pool_size=settings.db_pool_size,
                  busy_timeout_ms=settings.db_busy_timeout_ms, timeout_s=settings.db_timeout_s,
                  group_max=settings.db_group_commit_max,
                  sqlite_inline_writes=settings.db_sqlite_inline_writes,
                  durable=settings.db_durable_commits)
    store.on_wait = lambda seconds: metrics.observe("kinwire_db_pool_wait_seconds", seconds)
    broker = make_broker(settings, metrics)
    # The collaborators first, then the context that carries them (typed in server/context.py).
    meters = Meters(store, broker, clock, minute_s=settings.visit_minute_s,
                    lease_s=settings.meter_lease_s, node_id=secrets.token_hex(6),
                    sink=Outbox,
                    push_live=lambda who, kind, data: calls.push_live(broker, who, kind, data),
                    metrics=metrics, node_lease_s=settings.resolved_node_lease_s)
    blobs = open_blobs(settings)  # photos and recordings: folders or S3 (server/blobs)
    # --- relay mode (signalling/relay.py): this process's relayed visits, their recordings
    # written under the recordings dir (.partial/) and then kept in the blob store as records ---
    recordings = Recordings(store, blobs.recordings, clock)
    # Janus's recordings (server/janus_recordings.py): its .mjr files, read where the Janus
    # servers wrote them, become records the same way once their visit ended
    janus_recordings = None
    if settings.media_engine == "janus" and settings.janus_recordings_dir:
        # Imported here: it loads PyAV, which a start on the embedded engine must not
        # (tests/unit/test_what_a_start_imports.py).
        from server.janus_files import RemoteFolders
        from server.janus_recordings import JanusRecordings

        janus_recordings = JanusRecordings(
            store, recordings, Path(settings.janus_recordings_dir), blobs.recording_staging,
            remote=RemoteFolders(settings.janus_recordings_urls,
                                 settings.janus_recordings_password,
                                 ca_file=settings.janus_recordings_ca)
            if settings.janus_recordings_urls else None)
    relay = Relay(store, broker, node_id=meters.node_id, lease_s=settings.relay_lease_s,
                  turn_secret=settings.turn_secret, turn_urls=settings.turn_urls,
                  stun_urls=settings.stun_urls, loopback_only=settings.relay_loopback_only,
                  recordings_dir=blobs.recording_staging,
                  push_live=lambda who, kind, data: calls.push_live(broker, who, kind, data),
                  party_channel=events.channel, clock=clock, sink=Outbox,
                  poke=meters.poke, stall_s=settings.media_stall_s,
                  gap_s=settings.media_gap_s,
                  metrics=metrics, keep_recording=recordings.keep,
                  transcode=settings.relay_transcode, capacity=settings.relay_capacity)
    # --- end relay mode ---
    # Email (server/mail.py): notifications written with the events that report them, sent
    # by a background sender; none of it when no relay is configured. Web Push beside it.
    relay_smtp = mail.relay_of(settings)
    notifier = mail_sender = vapid = push_sender = None
    if relay_smtp is not None:
        notifier = mail.Notifier(settings)
        mail_sender = mail.MailSender(store, relay_smtp, settings.mail_from, clock,
                                      attempts_max=settings.mail_attempts_max,
                                      public_url=settings.public_url)
        if settings.vapid_private_key:
            vapid = push.Vapid(settings.vapid_private_key, settings.vapid_subject)
            push_sender = push.PushSender(store, vapid, clock,
                                          attempts_max=settings.mail_attempts_max)
    ctx = Context(
        settings=settings, store=store, broker=broker, gateway=gateway or SandboxGateway(),
        hosted=SandboxPayments(settings.sandbox_pay_secret.encode() or None),
        passwords=Passwords(settings.argon2_time_cost, settings.argon2_memory_kib,
                            settings.argon2_workers),
        login_limiter=LoginLimiter(settings.login_failures_max, settings.login_window_s,
                                   settings.login_backoff_base_s,
                                   make_attempts(settings)),
        clock=clock, metrics=metrics,
        photo_work=PhotoWork(settings.photo_workers, settings.photo_queue_max),
        meters=meters, relay=relay, media=EmbeddedRelay(relay), recordings=recordings,
        blobs=blobs,
        janus_recordings=janus_recordings,
        notifier=notifier, mail_sender=mail_sender, vapid=vapid, push_sender=push_sender)
    app[CONTEXT] = ctx
    if notifier is not None:
        store.event_watchers.append(notifier)
    limits = make_limits(settings, meters.node_id)  # Redis: per-user limits across processes
    hub = Hub(store, broker, per_user_max=settings.ws_connections_per_user_max,
              page_max=settings.sync_page_max, metrics=metrics, limits=limits)
    app[HUB] = hub
    relay.sockets = hub.count  # advertised with its load: placement prefers fewer

    async def relay_visits() -> float:
        return float(relay.relayed())

    async def relay_capacity() -> float:
        return float(relay.capacity)

    metrics.collect("kinwire_relay_visits", relay_visits)
    metrics.collect("kinwire_relay_capacity", relay_capacity)
    app[DRAIN] = drain

    async def close_sockets() -> None:
        # 1012 "service restart": clients reconnect, through the balancer, to another process.
        await hub.close_all(RESTARTING, "server restarting")

    # Pruning and sweeps on one process (the lease holder); each process closes its own
    # sockets whose session expired.
    housekeeping = Housekeeping(store, broker, clock, node_id=meters.node_id,
                                lease_s=settings.housekeeping_lease_s,
                                batch_rows=settings.housekeeping_batch_rows,
                                retention_s=settings.event_retention_s, metrics=metrics,
                                per_process=hub.close_expired,
                                attempts=ctx.login_limiter.counters,
                                recordings=recordings,
                                janus_recordings=janus_recordings,
                                blobs={"recordings": blobs.recordings,
                                       "photos": blobs.photos},
                                partials=(blobs.staging, relay.recordings_dir),
                                in_use=relay.writing,
                                orphan_grace_s=settings.orphan_grace_s,
                                remind=notifier.remind if notifier else None)

    async def holding() -> float:
        return 1.0 if housekeeping.holding else 0.0

    metrics.collect("kinwire_housekeeping_holder", holding)

    async def rejoin_dropped() -> None:
        """This process's liveness lease lapsed (signalling/meters.py): a socket whose party
        another process's meter dropped from its visit meanwhile reconnects (1012) and
        rejoins; the others carry on."""
        for client in hub.in_visits():
            for visit_id in list(client.visits):
                try:
                    async with store.read() as conn:
                        row = await visits.get(conn, visit_id)
                    role = visits.role_of(row, client.principal.account_id)
                except Exception:
                    logging.getLogger("kinwire.meters").warning(
                        "could not check visit %s after a lapse", visit_id, exc_info=True)
                    continue
                if row.status in visits.IN_CALL \
                        and getattr(row, f"{role}_node") != meters.node_id:
                    client.close(RESTARTING, "rejoin the visit")
                    break

    meters.on_lapse = rejoin_dropped
    # Meters stop and release their leases, announcing it, so another process takes over now.
    # The relays move first, while the parties' sockets can still hear `visit.relay_moved`.
    drain.steps += [relay.hand_over, close_sockets, meters.stop]
    install_metrics(app, metrics, hub=hub, store=store, broker=broker)  # GET /metrics

    async def database(app: web.Application) -> AsyncIterator[None]:
        if run_migrations:
            await check_not_copied_file(store, [settings.resolved_blob_dir,
                                                settings.resolved_recordings_dir])
        await check_durability(store, log)  # refuses (UnsafeStart) or warns; needs no schema
        if run_migrations and store.dialect == "sqlite":
            await migrate(store)  # one process: it migrates itself
        elif run_migrations:
            # PostgreSQL: `kinwire migrate` is the deploy step (store/migrate.py); a
            # process of a newer version must not serve an older schema.
            behind = await schema_behind(store)
            if behind is not None:
                raise StartError(f"kinwire: the database schema is behind this version (at "
                                 f"{behind}): run `kinwire migrate` first (docs/deploy.md).")
        async with store.write() as conn:
            await ledger.ensure_system_accounts(conn)
        if settings.demo:
            from server.demo import seed_demo, show_demo

            show_demo(await seed_demo(ctx))
        yield
        await store.close()
        await blobs.close()  # after the relay's last recordings were put (messaging)
        ctx.photo_work.close()
        ctx.passwords.close()

    async def messaging(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        sweeper = asyncio.create_task(housekeeping.run(stop), name="housekeeping")
        mailer = None
        if mail_sender is not None:  # off: `kinwire serve`'s banner says so, once
            mailer = asyncio.create_task(mail_sender.run(stop), name="mail")
        pusher = None
        if push_sender is not None:
            pusher = asyncio.create_task(push_sender.run(stop), name="push")
        await meters.start()
        await relay.start()
        janus_http = await start_janus(ctx) if settings.media_engine == "janus" else None
        if limits is not None:
            limits.start()
        yield
        await relay.stop()  # relay mode: cut the media and finish the recordings
        await meters.stop()  # after its last ends' rooms were destroyed (Meters.on_end)
        if janus_http is not None:
            await ctx.janus.stop()
            await ctx.janus.engine.close()
            await janus_http.close()
            await asyncio.sleep(0)  # its sockets finish closing before the loop may stop
        stop.set()
        await sweeper
        if janus_recordings is not None and janus_recordings.remote is not None:
            await janus_recordings.remote.close()  # after the sweep's last pull
        if mailer is not None:
            await mailer
        if pusher is not None:
            await pusher
        await hub.close_all(RESTARTING, "server restarting")
        await hub.stop_all()
        if limits is not None:
            await limits.close()
        await broker.close()
        await ctx.login_limiter.counters.close()

    async def on_shutdown(app: web.Application) -> None:
        # Sockets first, with 1012 so that clients reconnect (to another process, at scale).
        await hub.close_all(RESTARTING, "server restarting")

    app.cleanup_ctx.append(database)
    app.cleanup_ctx.append(messaging)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get(WS_PATH, websocket)
    add_routes(app, ROUTES)
    async def openapi(request: web.Request) -> web.Response:
        return json_response(openapi_document())

    app.router.add_get("/api/v1/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    if settings.media_engine == "janus":
        # The Janus servers' event handler posts here (basic auth; docs/deploy.md, "Janus fleet").
        from server.http import janus_events

        janus_events.install(app, ctx)
    app.router.add_get("/readyz", readyz)
    if isinstance(ctx.hosted, SandboxPayments):
        # The built-in processor's page and its endpoints (billing/hosted.py): beside Kinwire's
        # API, not in it, as a real processor's would be on its own site.
        add_routes(app, routes_checkout.SANDBOX_ROUTES, prefix=routes_checkout.SANDBOX_PREFIX)

        async def sandbox_page(request: web.Request) -> web.FileResponse:
            return web.FileResponse(STATIC / "sandbox-pay.html")

        app.router.add_get(routes_checkout.SANDBOX_PREFIX + "/", sandbox_page)
    if (STATIC / "index.html").exists():
        async def index(request: web.Request) -> web.FileResponse:
            return web.FileResponse(STATIC / "index.html")

        async def favicon(request: web.Request) -> web.FileResponse:
            # Browsers and bookmarks ask for /favicon.ico whatever the page links.
            return web.FileResponse(STATIC / "img" / "favicon.ico")

        async def reset_page(request: web.Request) -> web.FileResponse:
            # The emailed password-reset link's page (its token in the fragment).
            return web.FileResponse(STATIC / "reset.html")

        app.router.add_get("/", index)
        app.router.add_get("/reset", reset_page)

        async def settings_page(request: web.Request) -> web.FileResponse:
            # A family's email choices (GET/PUT /api/v1/notifications); the emails link here.
            return web.FileResponse(STATIC / "settings.html")

        app.router.add_get("/settings", settings_page)
        app.router.add_get("/favicon.ico", favicon)
        app.router.add_static("/static/", STATIC)
    return app
