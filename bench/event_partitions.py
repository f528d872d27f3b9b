"""What partitioning `events` by week (migration 0014) costs a send in PostgreSQL itself.

`python -m bench.event_partitions [--rounds 6] [--sends 2000]` (PostgreSQL at KINWIRE_TEST_PG
or 127.0.0.1:5432): two fresh databases, one migrated to 0013 (one `events` table) and one to
head (partitioned by week), then, alternating between them round after round, `--sends`
transactions each doing a send's event work as server/events.py does it (one head bump a user
for two users, then one three-row insert into `events`) from 10 connections at once. Per
round it prints the wall time and the PostgreSQL backends' CPU (user + system from
/proc/<pid>/stat, so the server must be on this machine) per send: the figure a busy machine
disturbs least. Kinwire's own side is the same SQL on both (the driver sends the same
statements), so the difference is the database's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from store import Store
from store.migrate import migrate

ADMIN = os.environ.get("KINWIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
TICKS = os.sysconf("SC_CLK_TCK")
BODY = '{"id": "msg", "body": "' + "x" * 120 + '"}'


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def database(revision: str) -> str:
    name = f"kinwire_bench_ev_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = f"{ADMIN.rsplit('/', 1)[0]}/{name}"
    store = Store(url)
    try:
        await migrate(store, revision)
    finally:
        await store.close()
    return url


async def drop(url: str) -> None:
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await admin.close()


async def round_(url: str, sends: int, users: int = 300) -> tuple[float, float]:
    """(wall seconds, backend CPU seconds) for `sends` sends from 10 connections."""
    conns = [await asyncpg.connect(url) for _ in range(10)]
    pids = [await c.fetchval("SELECT pg_backend_pid()") for c in conns]
    bump = ("UPDATE event_heads SET last_seq = last_seq + $1 WHERE account_id = $2 "
            "RETURNING last_seq")
    # Inside one of the weeks made ahead (the first starts within 8 days), as a send's rows
    # land in the current week's partition; the one table takes any time.
    at = datetime.now(UTC) + timedelta(days=15)
    insert = ("INSERT INTO events (account_id, seq, type, data, at) VALUES "
              "($1, $2, 'message.new', $3, $7), ($1, $4, 'message.status', $3, $7), "
              "($5, $6, 'message.new', $3, $7)")
    await conns[0].executemany("INSERT INTO event_heads VALUES ($1, 0, 0) ON CONFLICT DO NOTHING",
                               [(f"acc_{i}",) for i in range(users)])
    queue = list(range(sends))

    async def worker(conn: asyncpg.Connection) -> None:
        while queue:
            n = queue.pop()
            a, b = sorted((f"acc_{n % users}", f"acc_{(n * 7 + 1) % users}"))
            if a == b:
                b = f"acc_{(n + 1) % users}"
                a, b = sorted((a, b))
            async with conn.transaction():
                sa = await conn.fetchval(bump, 2, a)
                sb = await conn.fetchval(bump, 1, b)
                await conn.execute(insert, a, sa - 1, BODY, sa, b, sb, at)

    before = sum(cpu_s(p) for p in pids)
    started = time.monotonic()
    await asyncio.gather(*(worker(c) for c in conns))
    wall = time.monotonic() - started
    used = sum(cpu_s(p) for p in pids) - before
    for c in conns:
        await c.close()
    return wall, used


async def main(rounds: int, sends: int) -> None:
    plain, partitioned = await database("0013"), await database("head")
    try:
        results: dict[str, list[tuple[float, float]]] = {"one table": [], "partitioned": []}
        for _ in range(rounds):
            for name, url in (("one table", plain), ("partitioned", partitioned)):
                wall, used = await round_(url, sends)
                results[name].append((wall, used))
                print(f"{name:12} {sends / wall:8.0f} sends/s  {used / sends * 1000:.3f} ms "
                      f"of PostgreSQL CPU a send  (load {os.getloadavg()[0]:.1f})", flush=True)
        for name, runs in results.items():
            print(f"median {name:12} {statistics.median(sends / w for w, _ in runs):8.0f} "
                  f"sends/s  {statistics.median(u for _, u in runs) / sends * 1000:.3f} ms "
                  f"a send")
    finally:
        await drop(plain)
        await drop(partitioned)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sends", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.sends))
