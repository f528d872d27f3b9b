"""The WebSocket load generator shared by the fan-out, idle and connect scenarios.

Kept cheap on purpose, since it runs on one core and must not be what is measured: sockets are
plain aiohttp client WebSockets, each read by a tight loop that does the least parsing it can
(the publish timestamp is cut out of the text, not JSON-decoded), and publishers speak Redis'
and NATS' wire protocols directly on one TCP connection, pipelined, instead of going through a
client library's per-command machinery.

Every server under test (Kinwire, the baselines) speaks the same first frames: the command
`{"id": 1, "op": "auth", "args": {"token": T}}` answered `{"id": 1, "ok": ...}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import secrets
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import aiohttp

from bench import common
from bench.common import User

JSON_PROTOCOL = "kinwire.v1.json"


def raise_nofile() -> int:
    """Raise this process's open-file limit to its hard limit; return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def session() -> aiohttp.ClientSession:
    """One client session for thousands of sockets: no connection cap, no cookie jar."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True),
                                 cookie_jar=aiohttp.DummyCookieJar())


def auth_frame(token: str, command_id: int = 1) -> str:
    return json.dumps({"id": command_id, "op": "auth", "args": {"token": token}})


async def open_authed(http: aiohttp.ClientSession, url: str, token: str,
                      timeout_s: float = 30.0) -> aiohttp.ClientWebSocketResponse:
    """A socket past `auth`: raises if the server refuses the token or closes."""
    ws = await http.ws_connect(url, protocols=(JSON_PROTOCOL,), heartbeat=None,
                               autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
    try:
        await ws.send_str(auth_frame(token))
        async with asyncio.timeout(timeout_s):
            await reply_to(ws, 1, "auth")
        return ws
    except BaseException:
        await ws.close()
        raise


async def reply_to(ws: aiohttp.ClientWebSocketResponse, command_id: int, op: str) -> None:
    """Read frames until the reply to command `command_id`; raise if it is an error or the
    socket closes first (pushes in between are skipped)."""
    while True:
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"socket closed before the {op} reply: {msg.type} {msg.data}")
        reply = json.loads(msg.data)
        if reply.get("id") == command_id:
            if "ok" not in reply:
                raise RuntimeError(f"{op} refused: {reply.get('error')}")
            return


async def open_many(http: aiohttp.ClientSession, url: str, tokens: Iterable[str],
                    concurrency: int = 64,
                    on_open: Callable[[aiohttp.ClientWebSocketResponse], object] | None = None,
                    ) -> list[aiohttp.ClientWebSocketResponse]:
    """Authenticated sockets for every token, at most `concurrency` handshakes at a time
    (the listen backlog is finite; a flood only measures SYN retries). `on_open` is called
    with each socket as soon as it is authenticated: start its reader there, since a socket
    nobody reads does not answer the server's heartbeat pings and gets closed."""
    tokens = list(tokens)
    out: list[aiohttp.ClientWebSocketResponse | None] = [None] * len(tokens)
    position = iter(range(len(tokens)))

    async def worker() -> None:
        for i in position:
            out[i] = ws = await open_authed(http, url, tokens[i])
            if on_open is not None:
                on_open(ws)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(tokens)))]
    try:
        await asyncio.gather(*workers)
    except BaseException:
        for w in workers:
            w.cancel()
        await close_all([ws for ws in out if ws is not None])
        raise
    return [ws for ws in out if ws is not None]


async def close_all(sockets: list[aiohttp.ClientWebSocketResponse],
                    concurrency: int = 256) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(ws: aiohttp.ClientWebSocketResponse) -> None:
        async with sem:
            with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
                await asyncio.wait_for(ws.close(), 2.0)

    await asyncio.gather(*(one(ws) for ws in sockets))


async def close_with_readers(sockets: list[aiohttp.ClientWebSocketResponse],
                             readers: list[asyncio.Task]) -> None:
    """Close a run's sockets, then stop the tasks that read them."""
    await close_all(sockets, concurrency=1000)
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)


# --- receiving timestamped frames ----------------------------------------------------------

@dataclass
class Tally:
    """Deliveries counted by every receiver; latencies kept only while `recording`."""
    delivered: int = 0
    recording: bool = False
    latencies: list[float] = field(default_factory=list)
    waiter: asyncio.Event = field(default_factory=asyncio.Event)
    wake_at: int = 0  # set `waiter` once `delivered` reaches this

    def add(self, stamp: float) -> None:
        self.delivered += 1
        if self.recording:
            self.latencies.append(time.monotonic() - stamp)
        if self.delivered >= self.wake_at:
            self.waiter.set()

    async def wait_for(self, count: int, timeout_s: float) -> bool:
        """Until `delivered >= count`; False on timeout (frames were lost or are very late)."""
        deadline = time.monotonic() + timeout_s
        while self.delivered < count:
            self.wake_at = count
            self.waiter.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self.waiter.wait(), left)
            except TimeoutError:
                return self.delivered >= count
        return True


def stamp_of_json_push(text: str) -> float:
    """The publish time in a push `{"type":"bench","data":{"t":<monotonic>}}`, without a
    JSON parse: the number sits between the last ':' and the closing braces."""
    return float(text[text.rindex(":") + 1:-2])


async def receive_json_pushes(ws: aiohttp.ClientWebSocketResponse, tally: Tally) -> None:
    receive = ws.receive
    text = aiohttp.WSMsgType.TEXT
    while True:
        msg = await receive()
        if msg.type is not text:
            return
        data = msg.data
        if data.startswith('{"type":"bench"'):
            tally.add(stamp_of_json_push(data))


def bench_stamp() -> float:
    return time.monotonic()


# --- publishers ---------------------------------------------------------------------------

def resp_command(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class RedisPublisher:
    """PUBLISH over one raw RESP connection, pipelined; replies (receiver counts) are read by
    a background task and summed, so a run can check every publish reached a subscriber."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.replies = 0
        self.receivers = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> RedisPublisher:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._writer is not None and self._task is not None
        self._task.cancel()
        self._writer.close()

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            line = await self._reader.readline()
            if not line:
                return
            if line[:1] == b":":
                self.replies += 1
                self.receivers += int(line[1:])
            else:
                raise RuntimeError(f"redis answered {line!r}")

    def publish_many(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        assert self._writer is not None
        chunk = b"".join(resp_command(b"PUBLISH", ch, payload) for ch, payload in items)
        self._writer.write(chunk)
        return chunk.count(b"*3\r\n$7\r\nPUBLISH")

    async def drain(self) -> None:
        assert self._writer is not None
        await self._writer.drain()


async def redis_channel_count(port: int, pattern: bytes) -> int:
    """PUBSUB NUMPAT is not it: count channels matching `pattern` with at least one
    subscriber (PUBSUB CHANNELS), on a connection of its own."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(resp_command(b"PUBSUB", b"CHANNELS", pattern))
        header = await reader.readline()
        count = int(header[1:])
        for _ in range(count * 2):
            await reader.readline()
        return count
    finally:
        writer.close()


async def wait_channels(port: int, pattern: bytes, n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (have := await redis_channel_count(port, pattern)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {have} of {n} channels subscribed in redis")
        await asyncio.sleep(0.05)


# --- users in bulk, fast ------------------------------------------------------------------

async def fast_users(database_url: str, n: int, *, role: str = "family",
                     ttl_s: int = 86_400) -> list[User]:
    """n accounts with one session each, inserted with three multi-row statements.

    bench.common.bulk_users goes through accounts.create row by row (about 5 ms a user on this
    machine: 10k users would take most of a scenario's time budget). The rows here are the ones
    accounts.create, ledger.open_account and auth.open_session write (same tables, ids from
    new_id, the same token hash); a scenario only needs users who can authenticate."""
    from billing.tables import ledger_accounts
    from server.auth import token_hash
    from server.schema import accounts, sessions, utcnow
    from store import Store
    from store.ids import new_id

    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    users: list[User] = []
    account_rows, ledger_rows, session_rows = [], [], []
    prefix = {"family": "fam", "person": "per"}.get(role, role[:3])
    for i in range(n):
        account_id = new_id(prefix)
        token = secrets.token_urlsafe(32)
        account_rows.append({"id": account_id, "role": role, "name": f"Bench {role} {i}",
                             "email": f"b-{secrets.token_hex(6)}@example.test"
                             if role != "person" else None,
                             "password_hash": None, "facility_id": None,
                             "inmate_number": None, "pin_hash": None, "created_at": now,
                             "disabled": False})
        ledger_rows.append({"id": account_id, "owner_id": account_id, "kind": "user",
                            "balance": 0})
        session_rows.append({"id": new_id("ses"), "token_hash": token_hash(token),
                             "account_id": account_id, "device_id": None, "created_at": now,
                             "expires_at": expires})
        users.append(User(account_id, token, role))
    store = Store(database_url, pool_size=2)
    try:
        async with store.write() as conn:
            step = 500
            for table, rows in ((accounts, account_rows), (ledger_accounts, ledger_rows),
                                (sessions, session_rows)):
                for start in range(0, len(rows), step):
                    await conn.execute(table.insert(), rows[start:start + step])
    finally:
        await store.close()
    return users


def write_tokens(path: Path, users: list[User]) -> Path:
    """The token -> account id map a baseline server loads at start (its 'session table')."""
    path.write_text(json.dumps({u.token: u.account_id for u in users}))
    return path


@asynccontextmanager
async def baseline(module: str, tokens: Path, workdir: Path,
                   *args: str) -> AsyncIterator[tuple[str, int]]:
    """Run `python -m bench.baselines.<module> --port P --tokens TOKENS ARGS...` for the
    block; yield its /ws URL and pid once /readyz answers."""
    port = common.free_port()
    proc = common.spawn([sys.executable, "-m", f"bench.baselines.{module}", "--port", str(port),
                         "--tokens", str(tokens), *args], cwd=common.ROOT,
                        log=workdir / "baseline.log")
    try:
        await common.wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        yield f"ws://127.0.0.1:{port}/ws", proc.pid
    finally:
        common.stop(proc)


def process_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class CpuMeter:
    """CPU seconds used by this process and by given pids over a stretch of wall time."""

    def __init__(self, pids: dict[str, int], cpu_of: Callable[[int], float]) -> None:
        self.pids = pids
        self.cpu_of = cpu_of

    def __enter__(self) -> CpuMeter:
        self.wall0 = time.monotonic()
        self.self0 = process_cpu_s()
        self.others0 = {name: self.cpu_of(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.wall0
        self.loadgen_pct = 100 * (process_cpu_s() - self.self0) / self.wall
        self.pct = {name: 100 * (self.cpu_of(pid) - self.others0[name]) / self.wall
                    for name, pid in self.pids.items()}
