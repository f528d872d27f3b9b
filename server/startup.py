"""What stops `kinwire` before it serves, said in one line an operator can act on.

`kinwire serve` (and the one-shot commands that open the database) first check that the
database and Redis answer; a failure is a `StartError` whose message names the service, where
it was looked for (the URL without its password), why, and what to do. The command line prints
that line and exits 1, without a traceback: the cause is the operator's to fix, not ours to
debug. A port that cannot be bound is said the same way (server/http/drain.py raises it). A service
lost after these checks, while serving, is the running server's business (retries, 503s,
/readyz), not this module's.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sqlite3
from urllib.parse import urlsplit, urlunsplit

from server.settings import Settings

CHECK_TIMEOUT_S_MAX = 10.0  # a host that drops packets is reported after this, not hung on
DOCTOR = "`kinwire doctor` checks every dependency"


class StartError(Exception):
    """Kinwire cannot start; the message is the one line to print."""


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    netloc = user + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _causes(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def reason(exc: BaseException, timeout_s: float) -> tuple[str, str]:
    """Why a connection failed, in a few plain words, and what kind of failure it is: `down`
    (nothing answers), `login` (user or password refused), `missing` (no such database) or
    `other`. The first cause in the chain that says it plainly wins."""
    for cause in _causes(exc):
        name = type(cause).__name__
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused: nothing listens there", "down"
        if isinstance(cause, socket.gaierror):
            return "unknown host name", "down"
        if isinstance(cause, TimeoutError):
            return f"no answer in {timeout_s:g} s", "down"
        if name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError",
                    "AuthenticationError"):
            return "the server refused that user or password", "login"
        if name == "InvalidCatalogNameError":
            return "that database does not exist", "missing"
        if isinstance(cause, PermissionError | FileNotFoundError):
            return f"{cause.strerror or 'cannot open'}: {cause.filename or cause}", "other"
        if isinstance(cause, sqlite3.OperationalError):
            return str(cause), "other"
        if name in ("DuplicatePreparedStatementError", "InvalidSQLStatementNameError"):
            return "a prepared statement was lost between connections", "pooler"
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__), "other"


DATABASE_FIX = {
    "down": "Start PostgreSQL there, or set DATABASE_URL to where it runs",
    "login": "Fix the user and password in DATABASE_URL (or the server's pg_hba.conf)",
    "missing": "Create it (`createdb`) or fix the database name in DATABASE_URL",
    "pooler": "Behind PgBouncer in transaction mode, add ?pool_mode=transaction to "
              "DATABASE_URL",
    "other": "Check DATABASE_URL",
}


async def check_database(settings: Settings) -> None:
    """The database answers a query, or StartError."""

    from store import Store

    url = settings.resolved_database_url
    timeout_s = min(settings.db_timeout_s, CHECK_TIMEOUT_S_MAX)
    store = None
    try:
        store = Store(url, pool_size=1, busy_timeout_ms=settings.db_busy_timeout_ms)
        async with asyncio.timeout(timeout_s):
            await store.ping()
    except Exception as exc:
        why, kind = reason(exc, timeout_s)
        if settings.is_sqlite:
            raise StartError(
                f"kinwire: cannot open the SQLite database {url.removeprefix('sqlite:///')} "
                f"({why}). Make KINWIRE_DATA_DIR (or DATABASE_URL) name a folder this user can "
                f"write.") from None
        raise StartError(
            f"kinwire: cannot reach the database at {_without_password(url)} ({why}). "
            f"{DATABASE_FIX[kind]}; {DOCTOR}.") from None
    finally:
        if store is not None:
            await store.close()


async def check_redis(settings: Settings) -> None:
    """Redis answers PING (when REDIS_URL is set), or StartError."""
    if not settings.redis_url:
        return
    from server.broker import redis_url

    timeout_s = CHECK_TIMEOUT_S_MAX
    target = redis_url.parse(settings.redis_url)
    where = _without_password(settings.redis_url) if target.kind == "single" else target.where
    try:
        info = await redis_url.ping(settings.redis_url, timeout_s)
    except Exception as exc:
        why, kind = reason(exc, timeout_s)
        fix = ("Fix the password in REDIS_URL" if kind == "login" else
               "Start Redis there or fix REDIS_URL (unset, one process runs on its in-memory "
               "broker)")
        raise StartError(
            f"kinwire: cannot reach Redis at {where} ({why}). {fix}; {DOCTOR}.") from None
    if str(info.get("cluster_enabled", 0)) == "1" and \
            not settings.redis_url.startswith(("redis+cluster://", "rediss+cluster://")):
        # A plain client on a cluster node reaches that node's slots only: leases on the
        # others would fail (MOVED) and channels would be broadcast to every node.
        raise StartError(
            f"kinwire: Redis at {where} is a Cluster node: set REDIS_URL=redis+cluster://"
            f"host:port[,host:port...] (docs/deploy.md, \"Redis\"); {DOCTOR}.")


def listen_error(exc: OSError, host: str, port: int) -> StartError:
    """A port that cannot be bound, said as what to do about it."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return StartError(
            f"kinwire: cannot listen on {where}: the port is already in use (another Kinwire "
            f"or another program holds it). Stop that process, or choose another port with "
            f"--port or KINWIRE_PORT.")
    if exc.errno == errno.EACCES:
        return StartError(
            f"kinwire: cannot listen on {where}: permission denied (ports below 1024 need "
            f"privileges). Choose a port above 1023 with --port or KINWIRE_PORT and let nginx "
            f"hold 80 and 443 (docs/deploy.md).")
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return StartError(
            f"kinwire: cannot listen on {where}: {host} is not an address of this machine. "
            f"Set --host or KINWIRE_HOST to one of its addresses (0.0.0.0 for all).")
    return StartError(f"kinwire: cannot listen on {where}: {exc.strerror or exc}.")
