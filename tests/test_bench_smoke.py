"""Every benchmark scenario runs once at its tiny size, in its own process, as `make bench`
runs it: the harness cannot rot unnoticed. (The benchmarks themselves are not in the suite.)"""

from __future__ import annotations

import math
from importlib.util import find_spec
from pathlib import Path

import pytest

from bench import run

EXISTING = [name for name in run.SCENARIOS if find_spec(f"bench.scenarios.{name}") is not None]


def test_every_scenario_module_is_a_known_scenario():
    modules = {p.stem for p in (Path(run.__file__).parent / "scenarios").glob("*.py")
               if p.stem != "__init__"}
    assert modules <= set(run.SCENARIOS), modules - set(run.SCENARIOS)
    assert EXISTING, "no scenario module at all"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXISTING)
def test_scenario_runs_at_tiny_size(name):
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
