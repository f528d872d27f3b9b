"""What every scenario shares: pinned processes, a Kinwire server, bulk sessions, statistics.

The machine has two cores: servers (Kinwire, a baseline, nats-server, Redis) run pinned to
SERVER_CPU and the load generator (the scenario's own process) to LOAD_CPU, so that the two do
not steal each other's cycles and a ratio between two servers measured in one run is fair.

A scenario returns one dict, the same shape for all (bench/run.py prints and stores it):

    {"scenario": "fanout", "size": "full",
     "rows": [{"case": "5k clients", "system": "kinwire", "deliveries_per_s": 81234.0, ...}],
     "targets": [{"what": "p99 at 5k clients", "value": 31.2, "limit": "<= 50 ms",
                  "met": True}],
     "notes": ["free text: what was measured and how"]}

`size` is "tiny" (the test suite's smoke run: seconds, a handful of clients) or "full".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

SERVER_CPU = 0
LOAD_CPU = 1
ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("KINWIRE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


# The cores this process may use when bench/common.py is first imported, before pin_self: read
# later, a pinned load generator would see one core and stop pinning its servers (they would
# inherit its affinity and share the load core: every relay run before this fix did).
_CPUS = len(os.sched_getaffinity(0))


def cpus() -> int:
    return _CPUS


def pin_self(cpu: int = LOAD_CPU) -> None:
    """Pin the calling process (the load generator) to one core, when there are two."""
    if cpus() > 1 and cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd: Sequence[str], *, cpu: int | None = SERVER_CPU, env: dict[str, str] | None = None,
          cwd: Path | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start a server process pinned to `cpu` (None: not pinned); output to `log` or nowhere."""
    full = list(cmd)
    if cpu is not None and cpus() > 1:
        full = ["taskset", "-c", str(cpu), *full]
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    return subprocess.Popen(full, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_http(url: str, proc: subprocess.Popen | None = None,
                    timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s")


async def scrape(base: str, prefixes: tuple[str, ...]) -> dict[str, float]:
    """A Kinwire server's /metrics lines whose names start with one of `prefixes`:
    name{labels} -> value."""
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith(prefixes):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def bucket_bound(samples: dict[str, float], histogram: str, share: float) -> float:
    """The upper bound of the bucket of `histogram` (from scrape) holding `share` of its
    observations (inf past the last bound); nan when it has none."""
    total = samples.get(f"{histogram}_count", 0.0)
    buckets = sorted((float(k.split('le="', 1)[1].rstrip('"}').replace("+Inf", "inf")), v)
                     for k, v in samples.items() if k.startswith(f"{histogram}_bucket{{"))
    for bound, count in buckets:
        if total and count >= share * total:
            return bound
    return float("nan")


async def wait_tcp(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout_s} s")


# --- processes' cost ---------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far, every thread (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


# --- statistics ------------------------------------------------------------------------

def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no samples."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds from samples in seconds."""
    return {"p50_ms": round(percentile(samples_s, 50) * 1000, 3),
            "p99_ms": round(percentile(samples_s, 99) * 1000, 3),
            "max_ms": round(max(samples_s) * 1000, 3) if samples_s else float("nan")}


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def target(what: str, value: float, limit: str, met: bool) -> dict[str, Any]:
    return {"what": what, "value": round(value, 3), "limit": limit, "met": bool(met)}


# --- a Kinwire server ------------------------------------------------------------------

@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    database_url: str
    data_dir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


def kinwire_env(database_url: str, data_dir: Path, redis_url: str = "",
                **settings: Any) -> dict[str, str]:
    """The environment of a benchmarked server: settings as KINWIRE_<NAME>, cheap argon2 (no
    scenario measures password hashing), warnings-only logs (logging is not what we measure)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KINWIRE_")}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, KINWIRE_DATA_DIR=str(data_dir),
               KINWIRE_ARGON2_MEMORY_KIB="1024", KINWIRE_ARGON2_TIME_COST="1",
               KINWIRE_LOG_LEVEL="WARNING")
    for name, value in settings.items():
        env[f"KINWIRE_{name.upper()}"] = str(value)
    return env


async def migrate(database_url: str, data_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "migrate", env=kinwire_env(database_url, data_dir),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"kinwire migrate failed: {err.decode()[-2000:]}")


@asynccontextmanager
async def kinwire(database_url: str, data_dir: Path, *, redis_url: str = "",
                  cpu: int | None = SERVER_CPU, port: int | None = None,
                  wrap: Sequence[str] = (), ready_s: float = 30.0,
                  **settings: Any) -> AsyncIterator[Server]:
    """A real `kinwire serve` process (migrated first), pinned, ready when yielded. `wrap`
    prefixes the command (e.g. valgrind: bench/profile_sends.py --callgrind), which execs it in
    the same process."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = kinwire_env(database_url, data_dir, redis_url, **settings)
    proc = spawn([*wrap, sys.executable, "-m", "server", "serve", "--port", str(port)], cpu=cpu,
                 env=env, cwd=ROOT, log=data_dir / f"kinwire-{port}.log")
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", proc, timeout_s=ready_s)
        yield Server(port, proc, database_url, data_dir)
    finally:
        stop(proc)


@asynccontextmanager
async def database(kind: str, workdir: Path) -> AsyncIterator[str]:
    """A fresh, migrated database: "sqlite" (a file in workdir) or "postgresql" (a new
    database on the local server, dropped afterwards)."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
        await migrate(url, workdir)
        yield url
        return
    import asyncpg

    name = f"kinwire_bench_{secrets.token_hex(4)}"
    admin = PG_ADMIN_URL.replace("postgresql://", "postgres://", 1)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        await migrate(url, workdir)
        yield url
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@contextlib.contextmanager
def workdir(prefix: str) -> Any:
    with tempfile.TemporaryDirectory(prefix=f"kinwire-bench-{prefix}-") as path:
        yield Path(path)


# --- users in bulk ---------------------------------------------------------------------

@dataclass
class User:
    account_id: str
    token: str
    role: str
    facility_id: str | None = None


async def bulk_users(database_url: str, n: int, *, role: str = "family",
                     facility_id: str | None = None, credits: int = 0,
                     ttl_s: int = 86_400) -> list[User]:
    """n accounts with an open session each, written straight to the store in one transaction.

    Signing up 10k people through the API would measure argon2 for minutes; the benchmark is
    about sockets and messages, so the rows are made the way the server makes them (same
    tables, same token hashing) without the password step. Credits, if any, are bought through
    the ledger's own purchase path so the books still balance."""
    from server import accounts
    from server.auth import open_session
    from server.schema import utcnow
    from store import Store

    store = Store(database_url, pool_size=2)
    users: list[User] = []
    try:
        now = utcnow()
        async with store.write() as conn:
            for i in range(n):
                row = await accounts.create(
                    conn, role=role, name=f"Bench {role} {i}", now=now,
                    email=None if role == "person" else f"b-{secrets.token_hex(6)}@example.test",
                    facility_id=facility_id,
                    inmate_number=f"B{secrets.token_hex(5)}" if role == "person" else None)
                token = await open_session(conn, account_id=row.id, ttl_s=ttl_s, now=now)
                users.append(User(row.id, token, role, facility_id))
            if credits:
                for user in users:
                    await grant(conn, user.account_id, credits, now)
    finally:
        await store.close()
    return users


async def grant(conn: Any, account_id: str, credits: int, now: Any) -> None:
    """Buy `credits` for an account through the sandbox gateway, as `POST /credits/purchase`
    would: the ledger's transfers and invariants are the real ones."""
    from billing.gateway import Card, SandboxGateway
    from billing.pricing import quote_purchase
    from billing.purchases import buy_credits

    quote = quote_purchase(credits, block=500, fee_cents=150, credits_max=10_000_000)
    await buy_credits(conn, SandboxGateway(), account_id=account_id, quote=quote,
                      card=Card("4242424242424242", 12, now.year + 3, "123", "Bench"),
                      key=f"bench-grant-{secrets.token_hex(8)}", now=now)
