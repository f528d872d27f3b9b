"""What a benchmark scenario's result must hold (bench/run.py and its report read it)."""

from __future__ import annotations

import math
from typing import Any


def well_formed(result: dict[str, Any], name: str) -> None:
    """A scenario's result as bench/run.py and its report read it: rows of figures, some of
    them non-zero and none NaN, targets and notes."""
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
