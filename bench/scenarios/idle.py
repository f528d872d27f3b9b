"""Scenario 3, idle sockets: memory per authenticated, idle /ws socket.

One server at a time (Kinwire with its defaults: SQLite, in-memory broker; then the baseline
bench/baselines/idle_ws.py, aiohttp checking a token from a dict). Its RSS is read once a few
sockets have come and gone (code paths warmed up), then after N authenticated sockets are
open and idle, then after as many as the open-file limit allows on the same process. Memory
per socket is (RSS after - RSS before) / sockets. The load generator reads every socket (so
Kinwire's heartbeat pings are answered) but sends nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench import common, load_ws

SIZES = {"tiny": (20, 40), "full": (10_000, None)}  # None: as many as the file limit allows
FD_MARGIN = 200  # descriptors left for the database, logs, listening socket, the loadgen's own
WARMUP = 20


async def measure(system: str, ws_url: str, pid: int, users: list[common.User],
                  warmup: list[common.User], steps: list[int]) -> list[dict[str, Any]]:
    rows = []
    tally = load_ws.Tally()
    sockets: list[Any] = []
    readers: list[asyncio.Task] = []
    async with load_ws.session() as http:
        warm = await load_ws.open_many(http, ws_url, [u.token for u in warmup])
        await load_ws.close_all(warm)
        await asyncio.sleep(0.5)
        before = common.rss_bytes(pid)
        try:
            for n in steps:
                new = await load_ws.open_many(
                    http, ws_url, [u.token for u in users[len(sockets):n]],
                    on_open=lambda ws: readers.append(
                        asyncio.create_task(load_ws.receive_json_pushes(ws, tally))))
                sockets += new
                await asyncio.sleep(1.0)  # let the server settle (tasks started, buffers freed)
                open_now = sum(not ws.closed for ws in sockets)
                if open_now != n:
                    raise RuntimeError(f"{system}: {n - open_now} of {n} sockets closed")
                after = common.rss_bytes(pid)
                rows.append({"case": f"{n} sockets", "system": system, "sockets": n,
                             "rss_before_mib": round(before / 2**20, 1),
                             "rss_after_mib": round(after / 2**20, 1),
                             "kb_per_socket": round((after - before) / n / 1024, 2)})
        finally:
            await load_ws.close_with_readers(sockets, readers)
    return rows


async def run(size: str) -> dict[str, Any]:
    limit = load_ws.raise_nofile()
    n, most = SIZES[size]
    most = most or limit - FD_MARGIN
    steps = [n, most] if most > n else [n]
    rows: list[dict[str, Any]] = []
    with common.workdir("idle") as workdir:
        async with common.database("sqlite", workdir) as url:
            users = await load_ws.fast_users(url, most + WARMUP)
            # the warm-up sockets have users of their own: every measured socket is a new user
            users, warmup = users[:most], users[most:]
            # auth timeout raised: on a busy machine a socket may wait long to be accepted
            async with common.kinwire(url, workdir / "kinwire", ws_auth_timeout_s=120) as server:
                rows += await measure("kinwire", server.ws_url, server.proc.pid, users, warmup,
                                      steps)
            tokens = load_ws.write_tokens(workdir / "tokens.json", users + warmup)
            async with load_ws.baseline("idle_ws", tokens, workdir) as (ws_url, pid):
                rows += await measure("baseline", ws_url, pid, users, warmup, steps)
    return {"scenario": "idle", "size": size, "rows": rows, "targets": targets(rows, n),
            "notes": notes(limit, most)}


def targets(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    by = {(r["sockets"], r["system"]): r for r in rows}
    ours, base = by[(n, "kinwire")], by[(n, "baseline")]
    ratio = ours["kb_per_socket"] / max(base["kb_per_socket"], 0.01)
    return [common.target(f"memory per socket vs baseline at {n} sockets", ratio, "<= 1.5x",
                          ratio <= 1.5),
            common.target(f"KB per socket at {n} sockets", ours["kb_per_socket"], "<= 50 KB",
                          ours["kb_per_socket"] <= 50)]


def notes(limit: int, most: int) -> list[str]:
    return [
        "RSS of the server process (/proc/PID/status VmRSS) after a 20-socket warm-up, then "
        "with N authenticated idle sockets open; kb_per_socket = (after - before) / N.",
        f"The largest case is the open-file limit ({limit}, RLIMIT_NOFILE hard limit, raised "
        f"to in both processes) less {FD_MARGIN} descriptors: {most} sockets.",
        "Kinwire: `kinwire serve` defaults (SQLite, in-memory broker), one user per socket, so "
        "each socket also carries its user's feed (broker subscription + pump task).",
        "baseline: bench/baselines/idle_ws.py, aiohttp accepting the socket after checking the "
        "token in a dict.",
    ]
