"""The soak's short version (bench/scenarios/soak.py at its tiny size): connection churn with
abrupt closes, purchases and photo messages against a real `kinwire serve`, which must end
with its file descriptors, asyncio tasks and sockets back where they were after the warm-up,
its RSS growth within the bound set from the full runs (docs/BENCHMARKS.md, "Soak"), no failed
cycle, and the books exact (one stored message per acknowledged send, ledger invariants)."""

from __future__ import annotations

import pytest

from bench import run
from tests.support.scenarios import well_formed


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_short_soak_leaks_nothing() -> None:
    result = run.run_isolated("soak", "tiny", timeout_s=170)
    well_formed(result, "soak")  # as the other scenarios' smoke runs (not run twice)
    missed = [t for t in result["targets"] if not t["met"]]
    assert not missed, (missed, result["rows"])
