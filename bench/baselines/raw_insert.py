"""The database's own insert rate: message-sized rows, nothing else, with the server's drivers.

`python -m bench.baselines.raw_insert --url URL --seconds S --batch K --writers W` creates a
scratch table shaped like `messages`, inserts rows for S seconds and prints one JSON line
`{"rows": n, "seconds": s, "rows_per_s": r}`.

- SQLite (aiosqlite, the server's pragmas: WAL, synchronous=FULL): one connection, as the
  server's single writer; each transaction is `BEGIN IMMEDIATE`, K inserts, `COMMIT`.
- PostgreSQL (asyncpg): W concurrent writers on a pool of W connections, as the server's pool;
  each transaction is K inserts then COMMIT.

K = 1 is "one commit per row"; K > 1 is "many rows, one commit", the policy of group commit.
Every insert is its own statement (no executemany), as a send's insert is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from datetime import UTC, datetime

TABLE = "bench_raw_" + secrets.token_hex(3)
BODY = "x" * 120  # the scenario's message body size
CREATE = (f"CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, sender_id TEXT NOT NULL, "
          "recipient_id TEXT NOT NULL, body TEXT NOT NULL, client_key TEXT NOT NULL, "
          "created_at TEXT NOT NULL)")


def row(n: int) -> tuple:
    return (f"msg_{n:012d}", "fam_sender", "per_recipient", BODY, f"k{n}",
            datetime.now(UTC).isoformat())


async def sqlite(path: str, seconds: float, batch: int) -> tuple[int, float]:
    import aiosqlite

    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000"):
            await db.execute(f"PRAGMA {pragma}")
        await db.execute(CREATE)
        sql = f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?)"
        n, started = 0, time.monotonic()
        deadline = started + seconds
        while time.monotonic() < deadline:
            await db.execute("BEGIN IMMEDIATE")
            for _ in range(batch):
                await db.execute(sql, row(n))
                n += 1
            await db.execute("COMMIT")
        took = time.monotonic() - started
        await db.execute(f"DROP TABLE {TABLE}")
        return n, took
    finally:
        await db.close()


async def postgresql(url: str, seconds: float, batch: int,
                     writers: int) -> tuple[int, float]:
    import asyncpg

    pool = await asyncpg.create_pool(url.replace("postgresql://", "postgres://", 1),
                                     min_size=writers, max_size=writers)
    try:
        await pool.execute(CREATE)
        sql = f"INSERT INTO {TABLE} VALUES ($1, $2, $3, $4, $5, $6)"
        started = time.monotonic()
        deadline = started + seconds
        counter = iter(range(10**12))

        async def writer() -> int:
            done = 0
            async with pool.acquire() as conn:
                while time.monotonic() < deadline:
                    async with conn.transaction():
                        for _ in range(batch):
                            await conn.execute(sql, *row(next(counter)))
                    done += batch
            return done

        total = sum(await asyncio.gather(*(writer() for _ in range(writers))))
        took = time.monotonic() - started
        await pool.execute(f"DROP TABLE {TABLE}")
        return total, took
    finally:
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--writers", type=int, default=10)
    args = parser.parse_args()
    if args.url.startswith("sqlite:///"):
        rows, took = await sqlite(args.url.removeprefix("sqlite:///"), args.seconds, args.batch)
    else:
        rows, took = await postgresql(args.url, args.seconds, args.batch, args.writers)
    print(json.dumps({"rows": rows, "seconds": round(took, 3),
                      "rows_per_s": round(rows / took, 1)}))


if __name__ == "__main__":
    asyncio.run(main())
