"""Every benchmark scenario runs once at its tiny size, in its own process, as `make bench`
runs it: the harness cannot rot unnoticed. (The benchmarks themselves are not in the suite.)"""

from __future__ import annotations

import math
from importlib.util import find_spec
from pathlib import Path

import pytest

from bench import run
from tests.support.impaired_link import available

EXISTING = [name for name in run.SCENARIOS if find_spec(f"bench.scenarios.{name}") is not None]


def test_every_scenario_module_is_a_known_scenario():
    modules = {p.stem for p in (Path(run.__file__).parent / "scenarios").glob("*.py")
               if p.stem != "__init__"}
    assert modules <= set(run.SCENARIOS), modules - set(run.SCENARIOS)
    assert EXISTING, "no scenario module at all"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXISTING)
def test_scenario_runs_at_tiny_size(name):
    if name == "links" and available() is not None:  # as tests/browser/test_browser_links.py skips
        pytest.skip(available())
    result = run.run_isolated(name, "tiny", timeout_s=60)
    assert "error" not in result, result.get("error")
    assert result["scenario"] == name and result["size"] == "tiny"
    assert result["rows"], "no rows"
    for row in result["rows"]:
        numbers = [v for k, v in row.items() if isinstance(v, int | float)
                   and not isinstance(v, bool) and k not in ("case", "system")]
        assert numbers, row
        assert any(v > 0 for v in numbers), row
        assert not any(isinstance(v, float) and math.isnan(v) for v in numbers), row
    assert result["targets"], "no targets"
    for t in result["targets"]:
        assert set(t) >= {"what", "value", "limit", "met"}, t
    assert result["notes"]


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
