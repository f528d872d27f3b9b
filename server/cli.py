"""The `kinwire` command: serve, migrate, create-admin, seed-demo, facility, settings, doctor,
backup, restore, blobs, visit-client. Settings come from the environment (`kinwire settings` lists
them); a failure to start is one line on standard error and exit status 1 (server/startup.py)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import sys

from billing import ledger
from server.settings import Settings, SettingsError, describe, from_env, unknown_variables
from server.startup import StartError, check_database, check_redis


def _context(settings: Settings):
    from billing.gateway import SandboxGateway
    from billing.hosted import SandboxPayments
    from server.auth import LoginLimiter, Passwords
    from server.context import Context
    from server.schema import utcnow
    from store import Store

    store = Store(settings.resolved_database_url, pool_size=2,
                  busy_timeout_ms=settings.db_busy_timeout_ms,
                  durable=settings.db_durable_commits)
    from server.broker.memory import MemoryBroker

    # One-shot commands publish nothing that a socket waits for; the memory broker suffices.
    return Context(settings=settings, store=store, broker=MemoryBroker(),
                   gateway=SandboxGateway(), hosted=SandboxPayments(),
                   passwords=Passwords(settings.argon2_time_cost, settings.argon2_memory_kib),
                   login_limiter=LoginLimiter(settings.login_failures_max,
                                              settings.login_window_s), clock=utcnow)


async def _prepared(settings: Settings):
    from store.migrate import migrate
    from store.safety import check_not_copied_file

    await check_database(settings)  # unreachable: one line, not a traceback
    ctx = _context(settings)
    await check_not_copied_file(ctx.store, [settings.resolved_blob_dir,
                                            settings.resolved_recordings_dir])
    await migrate(ctx.store, lock_timeout_ms=settings.db_migrate_lock_timeout_ms or None)
    async with ctx.store.write() as conn:
        await ledger.ensure_system_accounts(conn)
    return ctx


async def _migrate(settings: Settings, _args) -> int:
    ctx = await _prepared(settings)
    await ctx.store.close()
    print("migrations applied", flush=True)
    return 0


async def _seed_demo(settings: Settings, _args) -> int:
    from server.demo import seed_demo, show_demo

    ctx = await _prepared(settings)
    try:
        show_demo(await seed_demo(ctx))
    finally:
        await ctx.store.close()
    return 0


async def _create_admin(settings: Settings, args) -> int:
    from server import accounts, audit
    from server.errors import Refused

    password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline()
    password = password.rstrip("\n")
    if not 8 <= len(password) <= 200:
        print("error: the password must be 8 to 200 characters", file=sys.stderr)
        return 2
    try:
        email = accounts.normal_email(args.email)  # the one spelling sign-up and login use
    except ValueError:
        print("error: that is not an email address", file=sys.stderr)
        return 2
    ctx = await _prepared(settings)
    try:
        now = ctx.clock()
        async with ctx.store.write() as conn:
            row = await accounts.create(conn, role="admin", name=args.name, email=email, now=now,
                                        password_hash=await ctx.passwords.hash(password))
            await audit.record(conn, actor_id="cli", actor_role="admin", action="admin.create",
                               target=row.id, at=now, details={"email": row.email})
    except Refused as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await ctx.store.close()
    print(f"admin {row.email} created ({row.id})", flush=True)
    return 0


async def _facility(settings: Settings, args) -> int:
    import json

    from server import audit, facilities
    from server.errors import Refused

    try:
        patch = json.loads(args.settings or "{}")
        if not isinstance(patch, dict):
            raise ValueError("settings must be a JSON object")
    except ValueError as exc:
        print(f"error: --settings: {exc}", file=sys.stderr)
        return 2
    ctx = await _prepared(settings)
    try:
        now = ctx.clock()
        async with ctx.store.write() as conn:
            if args.action == "create":
                if not args.name or not args.timezone:
                    raise Refused("invalid_input", "create needs --name and --timezone")
                row = await facilities.create(conn, name=args.name, timezone=args.timezone,
                                              settings=patch, now=now)
            else:
                row = await facilities.update(conn, args.id, patch=patch, name=args.name,
                                              timezone=args.timezone, now=now)
            await audit.record(conn, actor_id="cli", actor_role="admin",
                               action=f"facility.{args.action}", facility_id=row.id,
                               target=row.id, at=now, details={"settings": patch})
    except Refused as exc:
        # An operator wrote JSON keys: name the key beside the plain words.
        where = [f["field"] for f in exc.details.get("fields", [])][:1]
        print(f"error: {where[0] + ': ' if where else ''}{exc.message}", file=sys.stderr)
        return 1
    finally:
        await ctx.store.close()
    print(json.dumps(facilities.public_view(row, full=True), indent=2), flush=True)
    return 0


async def _visit_client(_settings: Settings, args) -> int:
    """Join a visit with aiortc, send a synthetic or file camera, report frames received."""
    import json
    import os

    from signalling.visit_client import VisitClient, VisitError

    token = args.token or os.environ.get("KINWIRE_TOKEN", "")
    if not token:
        print("error: pass --token or set KINWIRE_TOKEN", file=sys.stderr)
        return 2
    client = VisitClient(args.url, token, args.visit, codec=args.codec, camera=args.camera,
                         loopback_only=args.loopback_only, device_token=args.device_token)
    try:
        joined = await client.start()
    except (VisitError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        await client.close()
        return 1
    print(json.dumps({"joined": joined.get("role"), "media": joined.get("media")}), flush=True)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.seconds
        while loop.time() < deadline and client.ended is None and not client.closed:
            await asyncio.sleep(1)
            print(json.dumps({"state": client.connection_state, "frames": client.frames}),
                  flush=True)
    finally:
        if client.ended is None:
            await client.leave()
        await client.close()
    print(json.dumps({"ended": client.ended, "frames": client.frames}), flush=True)
    return 0


def _serve(settings: Settings, args) -> int:
    from server.app import create_app

    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    if args.demo:
        settings = settings.replace(demo=True)
    asyncio.run(_reachable(settings))

    def banner(addresses: list) -> None:
        # Printed once the port is bound, so that it never announces a server that is not there.
        bound = addresses[0][1] if addresses else port
        url = settings.public_url or f"http://{host}:{bound}/"
        # Email's state is said here, once (docs/operations.md, "Email").
        email = "on" if settings.mail_enabled else "off: no KINWIRE_SMTP_URL, so no " \
            "notifications or password reset by email"
        print(f"Kinwire on {url} (database: {settings.resolved_database_url.split('://')[0]}, "
              f"broker: {'redis' if settings.redis_url else 'memory'}, email: {email})",
              flush=True)

    from server.http.drain import serve
    from server.http.logs import AccessLogger  # metrics/logs: no query strings, with request ids

    app = create_app(settings)
    # The garbage collector (docs/BENCHMARKS.md, "Fan-out"): what start-up built lives as long
    # as the process, so it is kept out of every full collection; and young collections come
    # every 50,000 allocations instead of 700, so that a fan-out burst's short-lived tasks and
    # futures die young instead of being promoted and triggering full collections, each of
    # which scanned every socket's objects (~1 s of CPU at 10,000 sockets).
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
    # SIGTERM drains (server/http/drain.py): 1012 to sockets, meters handed over, requests finished.
    asyncio.run(serve(app, host, port, timeout_s=settings.drain_timeout_s,
                      access_log_class=AccessLogger, on_listening=banner))
    return 0



async def _backup(settings: Settings, args) -> int:
    from pathlib import Path

    from server import backup

    if args.words[0] == "verify":
        if len(args.words) != 2:
            print("usage: kinwire backup verify DIR", file=sys.stderr)
            return 2
        problems = backup.verify(Path(args.words[1]))
        for problem in problems:
            print(f"FAIL {problem}", flush=True)
        print("backup verify: " + (f"{len(problems)} problems" if problems else "ok"), flush=True)
        return 1 if problems else 0
    if len(args.words) != 1:
        print("usage: kinwire backup DIR | kinwire backup verify DIR", file=sys.stderr)
        return 2
    try:
        manifest = await backup.backup(settings, Path(args.words[0]))
    except backup.BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"backup {args.words[0]}: {manifest['dialect']} database at revision "
          f"{manifest['revision']}, {len(manifest['photos'])} photos, "
          f"{len(manifest['files'])} files", flush=True)
    for name in manifest["missing"]:
        print(f"warning: {name} is referenced by the database but is not in the blob store",
              file=sys.stderr)
    return 1 if manifest["missing"] else 0


async def _restore(settings: Settings, args) -> int:
    from pathlib import Path

    from server import backup

    try:
        manifest = await backup.restore(settings, Path(args.dir))
    except backup.BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"restored {args.dir} (taken {manifest['taken_at']}): "
          f"{len(manifest['photos'])} photos, {len(manifest['files'])} files; "
          "`kinwire serve` migrates it if it is older than this version", flush=True)
    return 0


async def _reachable(settings: Settings) -> None:
    await check_database(settings)
    await check_redis(settings)


async def _doctor(settings: Settings, _args) -> int:
    from server.doctor import report, run

    logging.getLogger("aioice").setLevel(logging.WARNING)  # the checks speak for themselves
    return report(await run(settings))


async def _blobs(settings: Settings, args) -> int:
    from server.blobs.configured import open_blobs
    from server.blobs.migrate import migrate

    if not settings.blob_url:
        print("kinwire blobs migrate: KINWIRE_BLOB_URL is not set: there is no S3 store to "
              "copy to (docs/deploy.md, \"Object storage\")", file=sys.stderr)
        return 1
    blobs = open_blobs(settings)
    try:
        tally = await migrate([("photos", settings.resolved_blob_dir, blobs.photos),
                               ("recordings", settings.resolved_recordings_dir,
                                blobs.recordings)], lambda line: print(line, flush=True))
    finally:
        await blobs.close()
    return 1 if tally.mismatched else 0


def _settings_table(_settings: Settings, _args) -> int:
    print("| variable | default | meaning |\n|---|---|---|")
    for env, default, doc in describe():
        print(f"| `{env}` | `{default}` | {doc} |")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kinwire", description="Kinwire: messaging and video visits for families and "
        "incarcerated people. A failure to start is one line on standard error (what failed, "
        "why, what to do) and exit status 1.",
        epilog="Every command reads its settings from the environment: `kinwire settings` "
        "lists them, README.md explains them. `kinwire COMMAND --help` describes a command.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="run the server (the default of `python -m server`)",
        description="Run the HTTP and WebSocket server until SIGTERM or Ctrl-C, then drain "
        "(docs/deploy.md). On SQLite applies migrations first; on PostgreSQL refuses to start "
        "while the schema is behind (run `kinwire migrate`); checks that the database and "
        "Redis answer before it listens.")
    serve.add_argument("--host", help="address to listen on (default: KINWIRE_HOST, "
                       "127.0.0.1; 0.0.0.0 for every address)")
    serve.add_argument("--port", type=int, help="TCP port to listen on (default: KINWIRE_PORT, "
                       "8080; 0 picks a free one)")
    serve.add_argument("--demo", action="store_true",
                       help="seed the demo facility, people, staff and family, and print their "
                       "logins (like KINWIRE_DEMO=true)")
    sub.add_parser("migrate", help="apply database migrations",
                   description="Bring the database (DATABASE_URL) to the newest schema; safe to "
                   "run again, and from several processes at once. On PostgreSQL it is the "
                   "deploy step: each migration in its own transaction, table locks waited "
                   "for at most KINWIRE_DB_MIGRATE_LOCK_TIMEOUT_MS, indexes built "
                   "CONCURRENTLY while the old version keeps serving.")
    admin = sub.add_parser(
        "create-admin", help="create an administrator (password on standard input)",
        description="Create an administrator account. The password is read from standard "
        "input (asked for, unechoed, at a terminal): 8 to 200 characters.")
    admin.add_argument("--email", required=True, help="the administrator's sign-in email")
    admin.add_argument("--name", default="Administrator",
                       help="the name shown in the audit log (default: Administrator)")
    sub.add_parser("seed-demo", help="create the demo facility, people, staff and family",
                   description="Create the demo data (a facility, two people, staff, a kiosk "
                   "device and a family account) and print the logins; safe to run again.")
    fac = sub.add_parser(
        "facility", help="create or update a facility",
        description="Create a facility, or change one's name, time zone or settings (audited "
        "as done by `cli`). Prints the facility as JSON.")
    fac.add_argument("action", choices=["create", "update"],
                     help="create (needs --name and --timezone) or update (needs the id)")
    fac.add_argument("id", nargs="?", help="the facility to update (its id)")
    fac.add_argument("--name", help="the facility's name")
    fac.add_argument("--timezone", help="an IANA time zone, e.g. America/Chicago")
    fac.add_argument("--settings", help='facility settings to set, a JSON object, e.g. '
                     '\'{"review_mode": "hold"}\' (docs/API.md lists them)')
    blobs = sub.add_parser(
        "blobs", help="blob store tasks: `blobs migrate` copies the photo and recording "
        "folders to S3", description="migrate: copy the photo and recording folders "
        "(KINWIRE_BLOB_DIR, KINWIRE_RECORDINGS_DIR) into the S3 store of KINWIRE_BLOB_URL, "
        "verifying every blob's SHA-256; files already there with the same checksum are "
        "skipped, so it can be run again after an interruption. One line per blob; exit "
        "status 1 on any mismatch. Deletes nothing.")
    blobs.add_argument("action", choices=["migrate"], help="migrate: copy the folders to S3")
    sub.add_parser("settings", help="print the settings table (Markdown)",
                   description="Print every setting: its environment variable, default and "
                   "meaning, as README.md's table.")
    sub.add_parser("doctor", help="check settings, database, Redis, TURN, folders "
                   "(docs/deploy.md)",
                   description="Check a deployment before it serves: one ok/warn/fail line "
                   "each; exit status 1 on any failure. Changes nothing.")
    bk = sub.add_parser(
        "backup", help="online backup of the database and the files it references",
        description="Write a consistent online snapshot of the database, exactly the photos "
        "and recordings it references and a manifest of SHA-256 checksums into an empty "
        "folder; `kinwire backup verify DIR` re-checks one (docs/operations.md).")
    bk.add_argument("words", nargs="+", metavar="[verify] DIR",
                    help="the backup folder (empty), or `verify` and a backup folder")
    rs = sub.add_parser(
        "restore", help="restore a backup into an empty data directory or database",
        description="Verify a backup, then restore its files and database into an empty "
        "KINWIRE_DATA_DIR (SQLite) or an empty DATABASE_URL (PostgreSQL).")
    rs.add_argument("dir", help="the backup folder")
    vc = sub.add_parser(
        "visit-client", help="join a visit with the aiortc reference client",
        description="Join a video visit as its family member or person with the Python "
        "reference client (aiortc): send a synthetic or file camera, print the connection "
        "state and frames received each second as JSON lines, leave at the end.")
    vc.add_argument("--url", default="http://127.0.0.1:8080",
                    help="the server's base URL (default: http://127.0.0.1:8080)")
    vc.add_argument("--token", help="a session token of a party of the visit (default: "
                    "KINWIRE_TOKEN)")
    vc.add_argument("--device-token", help="a kiosk session's device token (kiosk sessions "
                    "answer only with their device's token)")
    vc.add_argument("--visit", required=True, help="the visit's id")
    vc.add_argument("--codec", choices=["json", "msgpack"], default="json",
                    help="the WebSocket subprotocol's codec (default: json)")
    vc.add_argument("--camera", default="synthetic",
                    help="'synthetic' (default) or the path of a video file to send")
    vc.add_argument("--seconds", type=float, default=60.0,
                    help="stay this long at most, in seconds (default: 60)")
    vc.add_argument("--loopback-only", action="store_true",
                    help="relay-only ICE through a TURN server on loopback (tests)")
    return p


ASYNC = {"migrate": _migrate, "seed-demo": _seed_demo, "create-admin": _create_admin,
         "doctor": _doctor, "backup": _backup, "restore": _restore, "blobs": _blobs,
         "facility": _facility, "visit-client": _visit_client}
SYNC = {"serve": _serve, "settings": _settings_table}


def main(argv: list[str] | None = None, default: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {*ASYNC, *SYNC}
    if default and not (argv and argv[0] in commands) and argv[:1] not in (["-h"], ["--help"]):
        argv = [default, *argv]
    args = parser().parse_args(argv)
    command = args.command
    if command is None:
        parser().print_help()
        return 2
    try:
        settings = from_env()
    except SettingsError as exc:
        if command == "doctor":  # a failed check like the others, in the same format
            from server.doctor import settings_failed

            return settings_failed(str(exc))
        print(f"kinwire: bad setting: {exc}", file=sys.stderr)
        return 2
    for warning in unknown_variables():  # a misspelt setting is otherwise silently ignored
        print(warning, file=sys.stderr, flush=True)
    # metrics/logs: JSON lines or text (KINWIRE_LOG_FORMAT; `auto`: text at a terminal).
    from common.logs import configure

    configure(settings.log_level, settings.log_format)
    # Alembic announces every plugin at INFO; its warnings are what an operator needs.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from store.migrate import MigrateRefused
    from store.safety import UnsafeStart

    # A server that cannot or must not start (unreachable database, a copied file without its
    # WAL, commits that would not be durable) says why in one line: main answers for every command.
    try:
        if command in SYNC:
            return SYNC[command](settings, args)
        return asyncio.run(ASYNC[command](settings, args))
    except (StartError, MigrateRefused) as exc:
        print(exc, file=sys.stderr, flush=True)
        return 1
    except UnsafeStart as exc:
        print(f"kinwire: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
