"""Scenario 6, meters: many concurrent live visits metered by one process, shortened minute.

Method. n visits are written to the store (bench/load_visits.py) and, once the server is up,
made live in WAVES waves spread over one minute (both parties connected: the row a pair of
`visit.media connected` reports leaves), as people arrive over time. A real `kinwire serve`
process (pinned to SERVER_CPU, minute = MINUTE_S) meters them: its meter scanner claims each live
visit within half a lease and from then on the visit's meter debits one minute per minute_s
through the ledger, persists its state, emits the balance event and pushes ticks (to nobody: no
socket is open, see the notes). After RUN_S the server is stopped and the ledger is read back:
- lateness of a debit = its transfer's `at` - (the previous debit's `at` + minute_s): the meter
  starts a minute when the previous debit succeeded, so this is exactly how late the minute's
  debit came; the first debit is reported apart (claim delay: scanner period + queueing);
- missed minutes = whole minutes absent from a visit's chain of debits, up to the stop;
- double = debits whose minute number repeats or skips within a visit's keys, or two debits of a
  visit less than a minute apart; plus ledger.check_invariants;
- kinwire_meter_lateness_seconds (the meter's own histogram, from /metrics) as a cross-check;
- the server's CPU seconds over the metered period.
The baseline (bench/baselines/meter_timers.py) debits another n visits, made live in the same
waves, from a bare loop of asyncio timers with the same store and ledger call.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench import common
from bench.load_visits import make_visits, set_live

SIZES = {"tiny": 20, "full": int(os.environ.get("KINWIRE_BENCH_METERS_N", 10_000))}
# The shortened minute: 45 s is 222 debits a second at 10,000 visits, 1.33x production's load
# (60 s). A 5 s minute (2,000 a second) is beyond one core for the bare timer baseline too
# (docs/BENCHMARKS.md, "Meters"); KINWIRE_BENCH_METERS_MINUTE_S=5 still runs it.
MINUTE_S = {"tiny": 1.0, "full": float(os.environ.get("KINWIRE_BENCH_METERS_MINUTE_S", 45.0))}
RUN_S = {"tiny": 5.0, "full": 20.0}  # metered time after the last wave
WAVES = 10
DATABASE = os.environ.get("KINWIRE_BENCH_METERS_DB", "postgresql")
LATENESS_LIMIT_MS = 500.0
SLACK_S = 1.0  # a gap counts as a missed minute only beyond minute_s + this


async def ledger_chains(database_url: str, visit_ids: set[str]) -> dict[str, list[tuple]]:
    """Each visit's visit-minute debits, as (minute, at seconds), in time order."""
    from billing.tables import ledger_transfers
    from store import Store

    store = Store(database_url, pool_size=2)
    chains: dict[str, list[tuple]] = defaultdict(list)
    try:
        async with store.read() as conn:
            rows = (await conn.execute(select(
                ledger_transfers.c.ref, ledger_transfers.c.idempotency_key,
                ledger_transfers.c.at).where(ledger_transfers.c.kind == "visit_minute")
                .order_by(ledger_transfers.c.at))).all()
    finally:
        await store.close()
    for row in rows:
        if row.ref in visit_ids:
            chains[row.ref].append((int(row.idempotency_key.rsplit(":", 1)[1]),
                                    row.at.timestamp()))
    return chains


async def invariants(database_url: str) -> list[str]:
    from billing import ledger
    from store import Store

    store = Store(database_url, pool_size=2)
    try:
        async with store.read() as conn:
            return await ledger.check_invariants(conn)
    finally:
        await store.close()


def until(chains: dict[str, list[tuple]], visit_ids: Any, stop_at: float) -> dict[str, list]:
    """The chains of these visits, without debits after the stop (in flight while stopping)."""
    return {v: [(m, t) for m, t in c if t <= stop_at] for v, c in chains.items()
            if v in visit_ids}


def judge(chains: dict[str, list[tuple]], live_at: dict[str, float], stop_at: float,
          minute_s: float) -> dict[str, Any]:
    """Lateness, first-debit delay, missed and doubled minutes from the debits' chains."""
    late, first, missed, double = [], [], 0, 0
    for visit_id, started in live_at.items():
        chain = chains.get(visit_id, [])
        if not chain:
            missed += max(1, int((stop_at - started - SLACK_S) // minute_s))
            continue
        minutes = [m for m, _ in chain]
        double += sum(1 for i, m in enumerate(minutes) if m != i + 1)
        first.append(chain[0][1] - started)
        for (_, a), (_, b) in itertools.pairwise(chain):
            gap = b - a
            late.append(gap - minute_s)
            if gap < minute_s - 0.01:
                double += 1
            # the next debit was due at a + minute: minutes beyond that one are missing
            missed += max(0, int((gap - SLACK_S) // minute_s) - 1)
        missed += max(0, int((stop_at - chain[-1][1] - SLACK_S) // minute_s))
    return {"late": late, "first": first, "missed": missed, "double": double,
            "debits": sum(len(c) for c in chains.values())}


def result_row(system: str, n: int, minute_s: float, judged: dict[str, Any],
               cpu_s: float, wall_s: float) -> dict[str, Any]:
    late = common.summary_ms([max(0.0, x) for x in judged["late"]])
    first = common.summary_ms(judged["first"])
    return {"case": f"{n} visits, {minute_s:g} s minute", "system": system, "visits": n,
            "debits": judged["debits"], "lateness_p50_ms": late["p50_ms"],
            "lateness_p99_ms": late["p99_ms"], "lateness_max_ms": late["max_ms"],
            "first_debit_p50_ms": first["p50_ms"], "first_debit_p99_ms": first["p99_ms"],
            "missed": judged["missed"], "double": judged["double"],
            "cpu_s": round(cpu_s, 2), "cpu_share": round(cpu_s / wall_s, 3),
            "cpu_ms_per_debit": round(1000 * cpu_s / max(1, judged["debits"]), 3)}


async def waves(database_url: str, visit_ids: list[str], minute_s: float) -> dict[str, float]:
    """Make the visits live in WAVES equal waves over one minute; {visit: live instant}."""
    from server.schema import utcnow

    live_at: dict[str, float] = {}
    step = max(1, -(-len(visit_ids) // WAVES))
    for i in range(0, len(visit_ids), step):
        started = time.monotonic()
        now: datetime = utcnow()
        batch = visit_ids[i:i + step]
        await set_live(database_url, batch, now)
        live_at.update((v, now.timestamp()) for v in batch)
        await asyncio.sleep(max(0.0, minute_s / WAVES - (time.monotonic() - started)))
    return live_at


async def end_all(database_url: str, visit_ids: list[str]) -> None:
    from server.schema import utcnow, visits
    from store import Store

    store = Store(database_url, pool_size=2)
    try:
        async with store.write() as conn:
            now = utcnow()
            await conn.execute(visits.update().where(visits.c.id.in_(visit_ids)).values(
                status="ended", end_reason="hung_up", ended_at=now, updated_at=now,
                family_media="absent", person_media="absent"))
    finally:
        await store.close()


async def run_baseline(db: str, work: Path, ids: list[str], minute_s: float,
                       run_s: float) -> dict[str, Any]:
    listing = work / "baseline-visits.txt"
    listing.write_text("\n".join(ids))
    proc = common.spawn([sys.executable, "-m", "bench.baselines.meter_timers", "--database", db,
                         "--visits", str(listing), "--minute-s", str(minute_s),
                         "--run-s", str(run_s + 3 * minute_s), "--scan-s", "1"],
                        cwd=common.ROOT, log=work / "meter_timers.log")
    cpu0 = common.cpu_seconds(proc.pid)
    started = time.monotonic()
    live_at = await waves(db, ids, minute_s)
    await asyncio.sleep(run_s)
    stop_at = time.time()
    cpu_s = common.cpu_seconds(proc.pid) - cpu0
    wall_s = time.monotonic() - started
    common.stop(proc)  # debits after stop_at are not judged; each one is a whole transaction
    await end_all(db, ids)
    return {"live_at": live_at, "stop_at": stop_at, "cpu_s": cpu_s, "wall_s": wall_s}


async def run(size: str) -> dict[str, Any]:
    n, minute_s, run_s = SIZES[size], MINUTE_S[size], RUN_S[size]
    with common.workdir("meters") as work:
        async with common.database(DATABASE, work) as db:
            # 500 credits at 1 a minute: no visit ends for want of credits (purchases come in
            # blocks of 500)
            pairs = await make_visits(db, 2 * n, credits=500, minutes=60, started_s=30)
            base_ids = [p.visit_id for p in pairs[:n]]
            kin_ids = [p.visit_id for p in pairs[n:]]
            base = await run_baseline(db, work, base_ids, minute_s, run_s)
            async with common.kinwire(db, work / "server", visit_minute_s=minute_s) as server:
                pid = server.proc.pid
                cpu0 = common.cpu_seconds(pid)
                started = time.monotonic()
                live_at = await waves(db, kin_ids, minute_s)
                await asyncio.sleep(run_s)
                stop_at = time.time()
                cpu_s = common.cpu_seconds(pid) - cpu0
                wall_s = time.monotonic() - started
                metrics = await common.scrape(server.base, ("kinwire_meter_lateness_seconds",
                                                             "kinwire_meter_debits_total"))
            chains = await ledger_chains(db, set(base_ids) | set(kin_ids))
            problems = await invariants(db)
    kin = judge(until(chains, live_at, stop_at), live_at, stop_at, minute_s)
    bas = judge(until(chains, base["live_at"], base["stop_at"]), base["live_at"],
                base["stop_at"], minute_s)
    kin_row = result_row("kinwire", n, minute_s, kin, cpu_s, wall_s)
    if metrics.get("kinwire_meter_lateness_seconds_count"):
        kin_row["histogram_p99_le_ms"] = common.bucket_bound(
            metrics, "kinwire_meter_lateness_seconds", 0.99) * 1000
        kin_row["histogram_count"] = metrics["kinwire_meter_lateness_seconds_count"]
    base_row = result_row("timers", n, minute_s, bas, base["cpu_s"], base["wall_s"])
    if problems:
        raise AssertionError(f"ledger invariants broken: {problems}")
    return {"scenario": "meters", "size": size, "rows": [base_row, kin_row],
            "targets": [
                common.target("debit lateness p99 (ms)", kin_row["lateness_p99_ms"],
                              f"<= {LATENESS_LIMIT_MS:g} ms",
                              kin_row["lateness_p99_ms"] <= LATENESS_LIMIT_MS),
                common.target("missed minutes", kin["missed"], "0", kin["missed"] == 0),
                common.target("minutes debited twice", kin["double"], "0", kin["double"] == 0)],
            "notes": [
                f"{n} visits metered by one `kinwire serve` process on {DATABASE} (memory "
                f"broker), minute {minute_s:g} s (KINWIRE_VISIT_MINUTE_S), made live in {WAVES} "
                f"waves over one minute, metered {run_s:g} s after the last wave.",
                "The visits are made live by writing the row the parties' `visit.media "
                "connected` reports leave; the server's meter scanner (every half lease, 3 s) "
                "claims them, so first_debit includes that scan delay (in production the "
                "report pokes the meter at once). No sockets are open: the meters' ticks and "
                "balance events are published to the broker with no subscriber, so the cost "
                "of pushing them to 20,000 sockets is not included.",
                "lateness = a debit's transfer `at` - (previous debit's `at` + minute); "
                "missed = whole minutes absent from a visit's chain up to the stop; double = "
                "repeated or skipped minute keys or debits < 1 minute apart; ledger "
                "check_invariants holds (the run fails otherwise). histogram_p99_le_ms is the "
                "bucket bound holding p99 of kinwire_meter_lateness_seconds (wake-up only).",
                "timers: bench/baselines/meter_timers.py, one process, an asyncio timer per "
                "visit doing the same ledger.transfer + balance in one store.write(), same "
                "waves, same database, measured the same way.",
                "cpu_s / cpu_share: CPU seconds of the process over the metered period, and "
                "the share of one core that is (the server and baseline are pinned to "
                "SERVER_CPU; the database is not pinned)."]}
