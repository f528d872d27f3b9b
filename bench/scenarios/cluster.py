"""Scenario 7, two processes + Redis: cross-process delivery against single-process delivery,
measured in the same run on the same two processes.

Two `kinwire serve` processes (A and B) share a PostgreSQL database and a private redis-server.
PAIRS family/person pairs with an approved connection are split in two groups that run at the
same time: in "single" both sockets are on A, in "cross" the family's socket is on A and the
person's on B. Every family sends `typing {to: person}` RATE times a second (a live frame: the
op checks the contact in the store, publishes to the person's channel, and every process with a
socket of the person pushes it); the load generator stamps each send and the person's socket's
receipt of the `typing` push. With Redis configured every publish goes through Redis, also when
both sockets are on one process, so the difference between the groups is what crossing to
another process costs (B's reader, B's loop), not Redis itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import Any

import aiohttp

from bench import common
from bench.load_visits import Pair, Socket, http_session, kinwire_pair, make_visits, redis_server

SIZES = {"tiny": (3, 2.0), "full": (25, 20.0)}  # pairs per group, seconds of sending
RATE = 5.0  # typing frames a second per sender (the server allows 20)
LIMIT_MS = 2.0


class Group:
    def __init__(self, name: str) -> None:
        self.name = name
        self.samples: list[float] = []
        self.sent = 0
        self.refused = 0

    async def drive(self, http: aiohttp.ClientSession, pairs: list[Pair], url_family: str,
                    url_person: str, seconds: float) -> None:
        socks = await asyncio.gather(*(asyncio.gather(
            Socket.open(http, url_family, p.family.token),
            Socket.open(http, url_person, p.person.token)) for p in pairs))
        readers = []
        stamps: list[deque[float]] = []
        for fam, per in socks:
            queue: deque[float] = deque()
            stamps.append(queue)

            def received(frame: dict[str, Any], at: float, queue: deque[float] = queue) -> None:
                if frame.get("type") == "typing" and queue:
                    self.samples.append(at - queue.popleft())

            per.on_push = received
            readers += [asyncio.create_task(fam.reader()), asyncio.create_task(per.reader())]
        await asyncio.sleep(0.5)  # both processes' feeds subscribed to the persons' channels
        await asyncio.gather(*(
            self.sender(fam, pair.person.account_id, queue, seconds)
            for pair, (fam, _), queue in zip(pairs, socks, stamps, strict=True)))
        deadline = time.monotonic() + 15  # the last pushes arrive
        while len(self.samples) < self.sent - self.refused and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for fam, per in socks:
            await fam.ws.close()
            await per.ws.close()
        await asyncio.gather(*readers, return_exceptions=True)

    async def sender(self, sock: Socket, to: str, queue: deque[float],
                     seconds: float) -> None:
        """Paced sends, each reply awaited: a refused frame (never published) takes its stamp
        back off the queue before the next is sent, so stamps and receipts stay paired."""
        start = time.monotonic() + random.random() / RATE
        for i in range(int(seconds * RATE)):
            await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
            fut, sending = sock.send("typing", to=to)
            queue.append(time.time())
            await sending
            self.sent += 1
            frame = await fut
            if not frame.get("ok", {}).get("delivered"):
                self.refused += 1  # e.g. `unavailable`: the contact check timed out
                if queue:
                    queue.pop()

    def row(self) -> dict[str, Any]:
        lat = common.summary_ms(self.samples)
        return {"case": f"{self.name}", "system": "kinwire", "sent": self.sent,
                "received": len(self.samples), "refused": self.refused, "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"], "max_ms": lat["max_ms"]}


async def run(size: str) -> dict[str, Any]:
    pairs_n, seconds = SIZES[size]
    single, cross = Group("single process (A->A)"), Group("cross process (A->B)")
    with common.workdir("cluster") as work:
        async with common.database("postgresql", work) as db, \
                redis_server(work) as (redis_url, redis):
            pairs = await make_visits(db, 2 * pairs_n, minutes=60, started_s=30)
            async with kinwire_pair(db, work, redis_url=redis_url) as (a, b):
                pids = {"kinwire A": a.proc.pid, "kinwire B": b.proc.pid, "redis": redis.pid}
                cpu0 = {name: common.cpu_seconds(pid) for name, pid in pids.items()}
                started = time.monotonic()
                async with http_session() as http:
                    await asyncio.wait_for(asyncio.gather(
                        single.drive(http, pairs[:pairs_n], a.ws_url, a.ws_url, seconds),
                        cross.drive(http, pairs[pairs_n:], a.ws_url, b.ws_url, seconds)),
                        timeout=seconds + 120)
                wall = time.monotonic() - started
                cpu = {name: common.cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    for group in (single, cross):
        if len(group.samples) != group.sent - group.refused or group.refused > group.sent / 100:
            raise AssertionError(f"{group.name}: {group.sent} sent, {len(group.samples)} "
                                 f"received, {group.refused} not delivered")
    rows = [single.row(), cross.row()]
    rows.append({"case": "process CPU", "system": "all", "seconds": round(wall, 1),
                 **{f"{name.replace(' ', '_')}_cpu_s": round(v, 2) for name, v in cpu.items()},
                 "redis_cpu_share": round(cpu["redis"] / wall, 3),
                 "redis_cpu_us_per_frame": round(
                     1e6 * cpu["redis"] / max(1, single.sent + cross.sent), 1)})
    added = rows[1]["p99_ms"] - rows[0]["p99_ms"]
    return {"scenario": "cluster", "size": size, "rows": rows,
            "targets": [common.target("cross-process p99 - single-process p99 (ms)", added,
                                      f"<= {LIMIT_MS:g} ms", added <= LIMIT_MS)],
            "notes": [
                f"Two `kinwire serve` processes (A, B) on one PostgreSQL database and a private "
                f"redis-server; {pairs_n} pairs with both sockets on A and {pairs_n} pairs "
                f"with the sender on A and the recipient on B, at the same time; each sender "
                f"sends `typing` {RATE:g} times a second for {seconds:g} s (a live frame, "
                "through Redis in both groups). Latency = sender's stamp before writing the "
                "frame -> the recipient's socket reads the push.",
                "A, B and redis-server are pinned to SERVER_CPU, so they compete for one core "
                "(PostgreSQL is not pinned); cross-process delivery needs B's event loop to "
                "run as well as A's, which on one shared core is part of what is measured.",
                "redis_cpu_us_per_frame: Redis CPU over the run divided by frames sent (each "
                "frame is one PUBLISH delivered to the subscribed process or processes)."]}
