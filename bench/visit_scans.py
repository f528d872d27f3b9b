"""The meters' scans of `visits` at state scale, on PostgreSQL, before and after the partial
indexes of migration 0008 (docs/BENCHMARKS.md, "Meter scans").

    .venv/bin/python -m bench.visit_scans [--rows 1000000] [--runs 500]

Makes a database of its own (dropped at the end), migrated to 0004, with `--rows` historical
visits (ended, cancelled, missed, over the past year) written by one generate_series INSERT,
plus 20,000 scheduled upcoming visits and 300 in a call; then times, through the store, the
statements the code runs: the meters' scan for visits in a call (signalling/meters.py
`in_call_scan`, every half lease on every process) and housekeeping's look for scheduled visits
past their end (server/housekeeping.py `missed_scan`, nothing to mark in the steady state), and
as the floor a `SELECT 1` in the same kind of read transaction (the round trips and this
client's CPU, which no index changes). Then applies the migration (the index builds,
CONCURRENTLY) and times them again.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import time

import asyncpg
from sqlalchemy import text

from server.housekeeping import missed_scan
from server.schema import utcnow
from signalling.meters import in_call_scan
from store import Store
from store.migrate import migrate

ADMIN = os.environ.get("KINWIRE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

def past_scheduled(now):
    return missed_scan(now, 1000)


SEED = """
INSERT INTO facilities VALUES ('fac_bench', 'Bench', 'UTC', '{}', now(), now());
INSERT INTO accounts (id, role, facility_id, name, created_at, disabled)
  VALUES ('acc_family', 'family', NULL, 'F', now(), false),
         ('acc_person', 'person', 'fac_bench', 'P', now(), false);
INSERT INTO connections (id, facility_id, family_id, person_id, status, privileged,
                         created_at, updated_at)
  VALUES ('con_bench', 'fac_bench', 'acc_family', 'acc_person', 'approved', false, now(), now());
"""

ROWS = """
INSERT INTO visits (id, facility_id, connection_id, family_id, person_id, booked_by, start_at,
                    end_at, blocks, minute_price, media, record, status, end_reason, created_at,
                    updated_at, family_media, person_media)
SELECT 'vis_' || i, 'fac_bench', 'con_bench', 'acc_family', 'acc_person', 'acc_family',
       {start}, {start} + interval '30 minutes', 1, 50, 'direct', false, {status}, {reason},
       now(), now(), 'absent', 'absent'
FROM generate_series({first}, {last}) AS i
"""


async def setup(url: str, rows: int) -> float:
    """The rows; returns how long they took to write."""
    conn = await asyncpg.connect(url)
    started = time.perf_counter()
    try:
        await conn.execute(SEED)
        # History: one visit every 30 s back over the past year(s); 85% ended, 7% cancelled,
        # 8% missed.
        await conn.execute(ROWS.format(
            start="now() - interval '1 hour' - i * interval '30 seconds'",
            status="CASE WHEN i % 100 < 85 THEN 'ended' WHEN i % 100 < 92 THEN 'cancelled' "
                   "ELSE 'missed' END",
            reason="CASE WHEN i % 100 < 85 THEN 'time_up' ELSE NULL END",
            first=1, last=rows))
        # Booked ahead: 20,000 over the next two weeks.
        await conn.execute(ROWS.format(
            start=f"now() + interval '1 hour' + (i - {rows}) * interval '60 seconds'",
            status="'scheduled'", reason="NULL", first=rows + 1, last=rows + 20_000))
        # In a call now: 300.
        await conn.execute(ROWS.format(
            start="now() - interval '10 minutes'",
            status="(ARRAY['open', 'live', 'paused'])[1 + i % 3]", reason="NULL",
            first=rows + 20_001, last=rows + 20_300))
        await conn.execute("ANALYZE visits")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def timings(store: Store, runs: int) -> dict[str, dict[str, float]]:
    out = {}
    for name, build, expected in (("in_call", in_call_scan, 300),
                                  ("past_scheduled", past_scheduled, 0),
                                  ("floor_select_1", lambda now: text("SELECT 1"), 1)):
        took = []
        for _ in range(runs):
            now = utcnow()
            started = time.perf_counter()
            async with store.read() as conn:
                found = (await conn.execute(build(now))).all()
            took.append((time.perf_counter() - started) * 1000)
            assert len(found) == expected, (name, len(found))
        took.sort()
        out[name] = {"p50_ms": round(statistics.median(took), 3),
                     "p99_ms": round(took[int(len(took) * 0.99) - 1], 3),
                     "max_ms": round(took[-1], 3)}
    return out


async def plans(url: str, runs: int) -> dict[str, dict]:
    """Each scan's plan, and its execution time inside PostgreSQL (EXPLAIN ANALYZE, `runs`
    times): what the index changes, without the round trips and this client's CPU."""
    conn = await asyncpg.connect(url)
    try:
        out = {}
        for name, where in (("in_call", "status IN ('open', 'live', 'paused') "
                             "AND end_at > now() - interval '1 day'"),
                            ("past_scheduled", "status = 'scheduled' AND end_at <= now()")):
            took = []
            for _ in range(runs):
                plan = json.loads(await conn.fetchval(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM visits WHERE {where}"))[0]
                took.append(plan["Execution Time"])
            took.sort()
            node = plan["Plan"]
            out[name] = {"plan": node["Node Type"] + (f" on {node['Index Name']}"
                                                      if "Index Name" in node else ""),
                         "exec_p50_ms": round(statistics.median(took), 3),
                         "exec_p99_ms": round(took[int(len(took) * 0.99) - 1], 3)}
        return out
    finally:
        await conn.close()


async def main(rows: int, runs: int) -> dict:
    name = f"kinwire_bench_scans_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN.rsplit("/", 1)[0] + "/" + name
    result: dict = {"rows": rows, "runs": runs, "load_avg": os.getloadavg()[0]}
    try:
        store = Store(url, pool_size=2)
        try:
            await migrate(store, "0004")
            result["generate_s"] = round(await setup(url, rows), 1)
            result["before"] = await timings(store, runs)
            result["before_in_postgresql"] = await plans(url, runs)
            started = time.perf_counter()
            await migrate(store, "head")
            result["index_build_s"] = round(time.perf_counter() - started, 2)
            result["after"] = await timings(store, runs)
            result["after_in_postgresql"] = await plans(url, runs)
        finally:
            await store.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rows, args.runs)), indent=2))
