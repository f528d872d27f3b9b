"""`kinwire doctor`: check a deployment's settings and what it must reach, before it serves.

One line a check, `ok`, `warn` or `fail`, then the exit code: 0 without failures, 1 with any.
It reads the same environment as `kinwire serve`, changes nothing (it writes and removes one
probe file in each storage folder) and gives each network check a few seconds at most.
Checks: settings, database (reachable, migrations at head, commits durable), Redis, each
TURN/STUN URL (a STUN Binding, then a TURN Allocate with REST credentials made from the secret),
the Janus servers when they carry the media (API, VideoRoom, admin secret, the recordings folder
and janus-pp-rec), storage folders, public URL and origins, argon2 cost. docs/deploy.md shows it
in use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from server.settings import Settings

NET_TIMEOUT_S = 3.0
# OWASP Password Storage Cheat Sheet: argon2id minimum memory (KiB) for each number of passes.
OWASP_ARGON2_MEMORY_KIB = {1: 47_104, 2: 19_456, 3: 12_288, 4: 9_216, 5: 7_168}


@dataclass(frozen=True)
class Check:
    status: str  # "ok", "warn" or "fail"
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def ok(name: str, detail: str) -> Check:
    return Check("ok", name, detail)


def warn(name: str, detail: str) -> Check:
    return Check("warn", name, detail)


def fail(name: str, detail: str) -> Check:
    return Check("fail", name, detail)


def _why(exc: BaseException) -> str:
    """A short reason, without anything a URL's password might put in a message."""
    if isinstance(exc, TimeoutError):
        return f"no answer in {NET_TIMEOUT_S:g} s"
    text = str(exc).split("\n")[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- database ---------------------------------------------------------------------------------
def _missing_sqlite(settings: Settings) -> Path | None:
    """The SQLite file when it does not exist (opening it would create an empty one)."""
    if not settings.is_sqlite:
        return None
    path = Path(settings.resolved_database_url.removeprefix("sqlite:///"))
    return None if path.exists() else path


async def database(settings: Settings) -> Check:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from store import Store
    from store.migrate import alembic_config
    from store.safety import durability_problems

    url = settings.resolved_database_url
    missing = _missing_sqlite(settings)
    if missing is not None:
        return fail("database", f"SQLite file {missing} does not exist: run `kinwire migrate`")
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    store = Store(url, pool_size=1, durable=settings.db_durable_commits)
    try:
        async with asyncio.timeout(NET_TIMEOUT_S):
            async with store.read() as conn:
                current = set(await conn.run_sync(
                    lambda sync: MigrationContext.configure(sync).get_current_heads()))
            lost = await durability_problems(store)
    except Exception as exc:
        return fail("database", f"{store.dialect} unreachable ({_why(exc)})")
    finally:
        await store.close()
    if current != heads:
        return fail("database", f"migrations at {sorted(current) or 'none'}, head is "
                    f"{sorted(heads)}: run `kinwire migrate`")
    if lost and settings.db_durable_commits:
        return fail("database", f"acknowledged commits would not be durable ({'; '.join(lost)}): "
                    "`kinwire serve` refuses to start (docs/operations.md, \"Durability\")")
    kind = "SQLite: one host only" if settings.is_sqlite else "PostgreSQL"
    detail = f"{kind} reachable, migrations at head ({', '.join(sorted(heads))})"
    if not settings.db_durable_commits:
        return warn("database", f"{detail}; NOT DURABLE (KINWIRE_DB_DURABLE_COMMITS=false"
                    f"{': ' + '; '.join(lost) if lost else ''})")
    return ok("database", f"{detail}, commits durable")


# --- redis --------------------------------------------------------------------------------------
async def redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return warn("redis", "REDIS_URL is unset: the in-memory broker serves one process "
                    "only; set it before running several")
    from server.broker import redis_url

    where = redis_url.parse(settings.redis_url).where
    try:
        info = await redis_url.ping(settings.redis_url, NET_TIMEOUT_S)
    except Exception as exc:
        return fail("redis", f"{where} unreachable ({_why(exc)})")
    if str(info.get("cluster_enabled", 0)) == "1" and \
            not settings.redis_url.startswith(("redis+cluster://", "rediss+cluster://")):
        return fail("redis", f"{where} is a Cluster node: use redis+cluster://")
    return ok("redis", f"{where} answers PING")


# --- TURN and STUN ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IceUrl:
    scheme: str  # turn, turns, stun, stuns
    host: str
    port: int
    transport: str  # udp or tcp


def parse_ice_url(url: str) -> IceUrl:
    """`turn:host[:port][?transport=udp|tcp]` (RFC 7065) and `stun:host[:port]` (RFC 7064)."""
    scheme, _, rest = url.partition(":")
    address, _, query = rest.partition("?")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    secure = scheme in ("turns", "stuns")
    if address.startswith("["):
        host, _, tail = address[1:].partition("]")
        port = tail.removeprefix(":")
    else:
        host, _, port = address.partition(":")
    transport = params.get("transport", "tcp" if secure else "udp").lower()
    if not host or transport not in ("udp", "tcp") or (port and not port.isdigit()):
        raise ValueError(f"cannot read {url!r}")
    return IceUrl(scheme, host, int(port) if port else (5349 if secure else 3478), transport)


async def _stun_client(target: IceUrl, username: str | None, password: str | None):
    """An aioice TURN client protocol connected to `target` over its transport."""
    from aioice.turn import TurnClientTcpProtocol, TurnClientUdpProtocol

    loop = asyncio.get_running_loop()
    server = (target.host, target.port)
    args = dict(username=username, password=password, lifetime=60, channel_refresh_time=30)
    if target.transport == "tcp":
        return await loop.create_connection(lambda: TurnClientTcpProtocol(server, **args),
                                            target.host, target.port)
    return await loop.create_datagram_endpoint(lambda: TurnClientUdpProtocol(server, **args),
                                               remote_addr=server)


async def ice_server(url: str, secret: str) -> Check:
    """A STUN Binding (is coturn there?), then for TURN an Allocate with REST credentials
    (does it share our secret?), and the allocation is deleted at once."""
    from aioice import stun

    from signalling.turn import turn_password, turn_username

    name = f"turn {url}" if url.startswith("turn") else f"stun {url}"
    try:
        target = parse_ice_url(url)
    except ValueError as exc:
        return fail(name, str(exc))
    if target.scheme in ("turns", "stuns"):
        return warn(name, "TLS listener not checked; check a turn: URL of the same server")
    username = turn_username("kinwire-doctor", int(time.time()) + 300) if secret else None
    password = turn_password(secret, username) if username else None
    transport = None
    try:
        async with asyncio.timeout(NET_TIMEOUT_S):
            transport, client = await _stun_client(target, username, password)
            await client.request(stun.Message(message_method=stun.Method.BINDING,
                                              message_class=stun.Class.REQUEST))
    except Exception as exc:
        if transport is not None:
            transport.close()
        return fail(name, f"no STUN answer over {target.transport} ({_why(exc)})")
    if target.scheme == "stun":
        transport.close()
        return ok(name, f"STUN Binding answered over {target.transport}")
    try:
        async with asyncio.timeout(NET_TIMEOUT_S):
            relayed = await client.connect()
            await client.delete()
    except stun.TransactionFailed as exc:
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, ""))
        hint = (": KINWIRE_TURN_SECRET is not coturn's static-auth-secret"
                if code == 401 else "")
        return fail(name, f"reachable, but the Allocate was refused ({code} {reason}){hint}")
    except Exception as exc:
        return fail(name, f"reachable, but the Allocate failed ({_why(exc)})")
    finally:
        transport.close()
    return ok(name, f"STUN answered and REST credentials allocated a relay "
              f"({relayed[0]}:{relayed[1]}) over {target.transport}")


async def ice(settings: Settings) -> list[Check]:
    if not settings.turn_urls:
        return [warn("turn", "no KINWIRE_TURN_URLS: parties behind strict NATs or firewalls "
                     "cannot connect their video (docs/turn.md)")]
    urls = [*settings.turn_urls, *settings.stun_urls]
    return list(await asyncio.gather(*(ice_server(u, settings.turn_secret) for u in urls)))


# --- storage, URLs, passwords -------------------------------------------------------------------
def folder(name: str, path: Path) -> Check:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".kinwire-doctor-"):
            pass
    except OSError as exc:
        return fail(name, f"{path} is not writable ({type(exc).__name__}: {exc.strerror})")
    return ok(name, f"{path} is writable")


def folders(settings: Settings) -> list[Check]:
    checks = [folder("blob dir", settings.resolved_blob_dir),
              folder("recordings dir", settings.resolved_recordings_dir)]
    if settings.is_sqlite:
        checks.append(folder("data dir", Path(settings.data_dir)))
    return checks


async def blob_store(settings: Settings) -> list[Check]:
    """The S3 store of KINWIRE_BLOB_URL answers, and takes, reads back and deletes a probe
    blob under `.kinwire-doctor/` (the folders have their own checks above)."""
    if not settings.blob_url:
        return []
    import secrets

    from server.blobs.configured import open_blobs

    name, blobs = "blob store", open_blobs(settings)
    key, probe = f".kinwire-doctor/{secrets.token_hex(8)}", secrets.token_bytes(64)
    try:
        async with asyncio.timeout(NET_TIMEOUT_S * 3):  # HEADs, a PUT, a GET, a DELETE
            blobs.staging.mkdir(parents=True, exist_ok=True)
            path = blobs.staging / key.replace("/", "-")
            await asyncio.to_thread(path.write_bytes, probe)
            await blobs.photos.put(key, path)
            back = b"".join([c async for c in blobs.photos.read(key, 0, len(probe))])
            await blobs.photos.delete(key)
        if back != probe:
            return [fail(name, f"{settings.blob_url}: the probe blob came back changed")]
    except Exception as exc:
        return [fail(name, f"{settings.blob_url} is not reachable or not writable "
                     f"({_why(exc)})")]
    finally:
        await blobs.close()
    return [ok(name, f"{settings.blob_url} took, returned and deleted a probe blob")]


async def janus_fleet(settings: Settings) -> list[Check]:
    """With KINWIRE_MEDIA_ENGINE=janus: each server's API answers with the VideoRoom plugin,
    its admin API takes the admin secret, and the recordings folder is writable with
    janus-pp-rec installed to convert what lands there (or a warning that no Janus-carried
    visit's recording is kept)."""
    if settings.media_engine != "janus":
        return []
    import aiohttp

    from signalling.janus import JanusError, JanusServer, JanusUnavailable

    async def one(http: aiohttp.ClientSession, url: str, admin_url: str) -> Check:
        name = f"janus {url}"
        server = JanusServer(http, url, api_secret=settings.janus_api_secret,
                             admin_url=admin_url, admin_secret=settings.janus_admin_secret,
                             timeout_s=NET_TIMEOUT_S)
        try:
            info = await server.info()
            await server.status()
        except JanusUnavailable as exc:
            return fail(name, f"does not answer ({exc})")
        except JanusError as exc:
            return fail(name, f"its admin API at {admin_url} refused the admin secret ({exc})")
        if "janus.plugin.videoroom" not in (info.get("plugins") or {}):
            return fail(name, "answers without the VideoRoom plugin")
        return ok(name, f"Janus {info.get('version_string', '?')} with VideoRoom; "
                  "the admin API takes the admin secret")

    async with aiohttp.ClientSession() as http:
        checks = list(await asyncio.gather(*(
            one(http, url, admin) for url, admin in zip(settings.janus_urls,
                                                        settings.janus_admin_urls,
                                                        strict=True))))
    if not settings.janus_recordings_dir:
        checks.append(warn("janus recordings", "KINWIRE_JANUS_RECORDINGS_DIR is unset: no "
                           "Janus-carried visit's recording is kept (docs/deploy.md)"))
        return checks
    checks.append(folder("janus recordings dir", Path(settings.janus_recordings_dir)))
    checks += await janus_hosts_folders(settings)
    converter = shutil.which("janus-pp-rec")
    checks.append(ok("janus-pp-rec", converter) if converter else fail(
        "janus-pp-rec", "not found: install janus-tools, or no recorded Janus visit can be "
        "converted into a recording"))
    return checks


async def janus_hosts_folders(settings: Settings) -> list[Check]:
    """KINWIRE_JANUS_RECORDINGS_URLS: each Janus host's folder lists with the password."""
    from server.janus_files import RemoteFolders, Unreachable

    checks = []
    for url in settings.janus_recordings_urls:
        host = RemoteFolders((url,), settings.janus_recordings_password,
                             ca_file=settings.janus_recordings_ca)
        try:
            rooms = await asyncio.wait_for(host.rooms(strict=True), NET_TIMEOUT_S)
            checks.append(ok(f"janus recordings {url}", f"lists, with the password "
                             f"({len(rooms)} visits' files waiting)"))
        except (Unreachable, TimeoutError) as exc:
            checks.append(fail(f"janus recordings {url}", f"not listed ({_why(exc)}): no "
                               "visit recorded on that host can be kept"))
        finally:
            await host.close()
    return checks


def urls(settings: Settings) -> list[Check]:
    checks = []
    public = urlsplit(settings.public_url) if settings.public_url else None
    if public is None:
        checks.append(warn("public url", "KINWIRE_PUBLIC_URL is unset"))
    elif public.scheme == "http" and not _is_loopback(public.hostname):
        checks.append(warn("public url", f"{settings.public_url} is plain http on a "
                           "non-loopback host: terminate TLS in front (docs/deploy.md)"))
    elif public.scheme not in ("http", "https") or not public.hostname:
        checks.append(fail("public url", f"{settings.public_url!r} is not an http(s) URL"))
    else:
        checks.append(ok("public url", settings.public_url))
    plain = [o for o in settings.allowed_origins
             if o.startswith("http://") and not _is_loopback(urlsplit(o).hostname)]
    if plain:
        checks.append(warn("allowed origins", f"plain http origins allowed: {', '.join(plain)}"))
    elif public is not None and public.scheme == "https" and not settings.trusted_proxies:
        origin = f"https://{public.netloc}"
        if origin not in settings.allowed_origins:
            # Behind a TLS-terminating proxy the server sees http://, so a browser's https
            # Origin matches only when it is listed (or the proxy is trusted to say https).
            checks.append(warn("allowed origins", f"{origin} is not in KINWIRE_ALLOWED_ORIGINS:"
                               " browsers cannot open /ws through a TLS proxy"))
        else:
            checks.append(ok("allowed origins", ", ".join(settings.allowed_origins)))
    else:
        checks.append(ok("allowed origins", ", ".join(settings.allowed_origins) or
                         "the server's own origin only"))
    if settings.trusted_proxies:
        checks.append(ok("trusted proxies", ", ".join(settings.trusted_proxies)))
    elif public is not None and public.scheme == "https":
        checks.append(warn("trusted proxies", "KINWIRE_TRUSTED_PROXIES is unset: behind a TLS "
                           "proxy, session cookies lack Secure and the per-address login limit "
                           "counts every client as the proxy"))
    return checks


def argon2(settings: Settings) -> Check:
    passes, memory = settings.argon2_time_cost, settings.argon2_memory_kib
    floor = OWASP_ARGON2_MEMORY_KIB[min(passes, 5)]
    detail = f"argon2id t={passes}, m={memory} KiB"
    if memory < floor:
        return fail("argon2", f"{detail} is below OWASP's minimum (m >= {floor} KiB at "
                    f"t={passes}): raise KINWIRE_ARGON2_MEMORY_KIB or KINWIRE_ARGON2_TIME_COST")
    return ok("argon2", f"{detail} meets OWASP's minimum")


async def run(settings: Settings) -> list[Check]:
    """Every check, the slow network ones at once."""
    db, broker, turn, blobs, media = await asyncio.gather(
        database(settings), redis(settings), ice(settings), blob_store(settings),
        janus_fleet(settings))
    return [ok("settings", "valid"), db, broker, *turn, *media, *folders(settings), *blobs,
            *urls(settings), argon2(settings)]


def report(checks: list[Check], out: Callable[[str], None] = print) -> int:
    for check in checks:
        out(check.line())
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    out(f"{len(checks)} checks: {failed} failed, {warned} warnings")
    return 1 if failed else 0


def settings_failed(message: str) -> int:
    return report([fail("settings", message)])

