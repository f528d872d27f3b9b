"""Every benchmark scenario runs once at its tiny size, in its own process, as `make bench`
runs it: the harness cannot rot unnoticed. (The benchmarks themselves are not in the suite.)"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

from bench import run
from tests.support.impaired_link import available
from tests.support.scenarios import well_formed

EXISTING = [name for name in run.SCENARIOS if find_spec(f"bench.scenarios.{name}") is not None]
# Run elsewhere at the same tiny size, held to its targets too, and checked with
# `well_formed` there: tests/integration/test_soak.py.
RUN_ELSEWHERE = {"soak"}


def test_every_scenario_module_is_a_known_scenario():
    modules = {p.stem for p in (Path(run.__file__).parent / "scenarios").glob("*.py")
               if p.stem != "__init__"}
    assert modules <= set(run.SCENARIOS), modules - set(run.SCENARIOS)
    assert EXISTING, "no scenario module at all"


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in EXISTING if name not in RUN_ELSEWHERE])
def test_scenario_runs_at_tiny_size(name):
    if name == "links" and available() is not None:  # as tests/browser/test_browser_links.py skips
        pytest.skip(available())
    well_formed(run.run_isolated(name, "tiny", timeout_s=60), name)


def test_the_schedule_repeats_runs_only_while_they_fit_the_budget():
    """Every scenario runs once; later rounds only where the run (as long as its last) still
    ends within the budget. A clock that advances by each run's length stands in for time."""
    lengths = {"quick": 10.0, "long": 100.0}
    now = [0.0]
    order = []

    def one(name, i):
        order.append((name, i))
        now[0] += lengths[name]
        return {"scenario": name, "round": i}

    runs = run.schedule(["long", "quick"], 3, 250.0, one, clock=lambda: now[0])
    # round 1 in the given order: long (ends at 100), quick (110); later rounds shortest
    # first: quick (120), long (220); quick (230), long would end at 330 > 250: skipped
    assert order == [("long", 0), ("quick", 0), ("quick", 1), ("long", 1), ("quick", 2)]
    assert [r["round"] for r in runs["long"]] == [0, 1]
    assert len(runs["quick"]) == 3
    # A budget too small for any repeat still runs everything once.
    now[0] = 0.0
    order.clear()
    runs = run.schedule(["long", "quick"], 3, 1.0, one, clock=lambda: now[0])
    assert order == [("long", 0), ("quick", 0)]
