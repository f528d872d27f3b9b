"""PNG charts of bench/results.json (matplotlib, headless). Filled in per scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return []
