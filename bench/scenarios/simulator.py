"""Scenario 10, simulator: the billing simulator (tests/support/sim.py) over many visits with every
fault, its CPU stated in units of a host calibration timed in the same process.

Method. The scenario's process (pinned to LOAD_CPU, like every scenario's) times
bench/calibrate.py's fixed pure-Python round CALIBRATION_ROUNDS times, runs
`tests.support.sim.simulate(SEED, n, <a migrated SQLite file>)` (the pure meter against the real
ledger
on a virtual clock, every visit judged by tests/support/sim_check.py: billed seconds against
connected-with-media seconds, to the credit, and the ledger's invariants), then times the round
again. The round's CPU is the median of all those rounds; the figure compared across hosts is
the simulator's CPU for 10,000 visits in rounds (cpu_s / round_cpu_s, scaled to 10,000 visits).

A failing simulation (any visit's money or truth check, the ledger's invariants, fewer visits
than asked) fails the scenario with the seed and the replay command, as the suite's test did.

The target is issue 14's "10,000 simulated visits under 60 s", restated in rounds: on the host
where the 60 s bound was set (session 1, 2026-11-26), session 1's simulator (commit 52f74e8)
ran `--seed 4242 --visits 10000` in 43.1 s at load 0.2; the same code, seed and visits replayed
on the 2026-12 host took REPLAY_ROUNDS rounds of this calibration, so that host's round was
43.1 / REPLAY_ROUNDS s and 60 s there is 60 / 43.1 * REPLAY_ROUNDS rounds
(docs/BENCHMARKS.md, "The billing simulator", says how, and what it assumes).
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench import common
from bench.calibrate import round_cpu_s

SIZES = {"tiny": 300, "full": int(os.environ.get("KINWIRE_BENCH_SIM_VISITS", 10_000))}
CALIBRATION_ROUNDS = {"tiny": 1, "full": 5}  # before the simulation, and again after it
# A fixed seed: every run and every host simulates the same 10,000 visits, so that their CPU
# compares (fresh seeds, exploring, are the suite's: tests/integration/test_meter_sim.py).
SEED = int(os.environ.get("KINWIRE_BENCH_SIM_SEED", 4242))
# Session 1's simulator, 10,000 visits of seed 4242, replayed on the 2026-12 host: its CPU in
# rounds of bench/calibrate.py (111.1 and 108.8 in two replays at load 7-11; docs/BENCHMARKS.md).
REPLAY_ROUNDS = 110.0
LIMIT_ROUNDS = round(60 / 43.1 * REPLAY_ROUNDS)


async def run(size: str) -> dict[str, Any]:
    from tests.support.sim import describe, simulate

    n = SIZES[size]
    before, before_each = round_cpu_s(CALIBRATION_ROUNDS[size])
    with common.workdir("simulator") as work:
        url = f"sqlite:///{work / 'sim.db'}"
        await common.migrate(url, work)
        started, cpu = time.perf_counter(), time.process_time()
        result = simulate(SEED, n, work / "sim.db")
        wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    after, after_each = round_cpu_s(CALIBRATION_ROUNDS[size])
    if not result.ok or result.visits != n:
        head = "\n".join(describe(result).splitlines()[:12])
        raise AssertionError(f"{result.visits} of {n} visits simulated: {head}")
    unit = common.median(before_each + after_each)
    rounds_10k = cpu_s * 10_000 / n / unit
    stats = result.stats
    return {"scenario": "simulator", "size": size, "rows": [
        {"case": f"{n} visits, seed {SEED}", "system": "simulator", "visits": n,
         "wall_s": round(wall_s, 2), "cpu_s": round(cpu_s, 2),
         "visits_per_cpu_s": round(n / cpu_s, 1), "rounds_per_10k": round(rounds_10k, 1),
         "debit_attempts": stats["debit_attempts"], "takeovers": stats["takeovers"],
         "holder_crashes": stats["holder_crashes"], "stalls": stats["stalls"]},
        {"case": "reference round", "system": "calibration", "round_cpu_s": round(unit, 4),
         "before_s": round(before, 4), "after_s": round(after, 4),
         "rounds": len(before_each) + len(after_each)}],
        "targets": [
            common.target("visits failing the money or truth checks", 0, "0", True),
            common.target("CPU for 10,000 visits (calibration rounds)", rounds_10k,
                          f"<= {LIMIT_ROUNDS} (issue 14's 60 s on its host)",
                          rounds_10k <= LIMIT_ROUNDS)],
        "notes": [
            f"tests.support.sim.simulate(seed {SEED}, {n} visits) in this process, pinned to core "
            f"{common.LOAD_CPU}, on a migrated SQLite file (synchronous=OFF, as the simulator "
            "sets it); every fault of tests/support/sim_visit.py; each visit judged by "
            "tests/support/sim_check.py (billed against connected-with-media seconds, to the "
            "credit) "
            "and the ledger's invariants every 250 visits and at the end: a failure fails the "
            "run, with the seed and the replay command.",
            "calibration: bench/calibrate.py's fixed pure-Python round, timed "
            f"{CALIBRATION_ROUNDS[size]} times just before the simulation and as many just "
            "after (process CPU); round_cpu_s is the median of them all. rounds_per_10k = "
            "cpu_s / round_cpu_s, scaled to 10,000 visits: the figure that compares across "
            "hosts (at tiny size it includes the fixed start-up, so it reads high).",
            f"target: issue 14's 60 s for 10,000 visits, where it was set, is {LIMIT_ROUNDS} "
            f"rounds: session 1's simulator took 43.1 s there and {REPLAY_ROUNDS} rounds "
            "replayed on the 2026-12 host (docs/BENCHMARKS.md, \"The billing simulator\", "
            "says how and what that assumes). wall_s and cpu_s are this host's seconds, "
            "printed, never a target."]}
