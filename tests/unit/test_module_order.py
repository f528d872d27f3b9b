"""The order `make test`'s processes take the modules in (tests/conftest.py): a collection of
the whole suite, as pytest makes it. Adversary: the ordering function present and not wired
into collection (2026-12-06 to 12-07: the suite ran in name order, every Chromium module at
once at its start, and timing tests failed beside them)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.conftest import HEAVY, LONG_FIRST

ROOT = Path(__file__).resolve().parents[2]


def collected_modules(session: pytest.Session) -> list[Path]:
    """The suite's modules in the order collection left them: this session's own, when it
    collected the whole suite (`make test`: each xdist worker collects all of it, through the
    same hook), else a collection of the whole suite in a child process (~10 s of CPU)."""
    mine = _modules(str(item.path.relative_to(ROOT)) for item in session.items)
    if set(mine) >= {p.relative_to(ROOT) for p in (ROOT / "tests").glob("*/test_*.py")}:
        return mine
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                          "no:cacheprovider", "tests"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return _modules(line.split("::", 1)[0] for line in out.splitlines() if "::" in line)


def _modules(paths: Iterable[str]) -> list[Path]:
    """Each run of one module's tests once, in order (a module split apart shows twice)."""
    modules: list[Path] = []
    for path in map(Path, paths):
        if not modules or modules[-1] != path:
            modules.append(path)
    return modules


def test_the_long_modules_go_first_the_heavy_ones_apart_and_the_unit_ones_last(
        request: pytest.FixtureRequest) -> None:
    modules = collected_modules(request.session)
    assert len(modules) == len(set(modules)), "a module's tests were split apart"
    assert [p.name for p in modules[:len(LONG_FIRST)]] == list(LONG_FIRST)
    heavy = [p.parent.name == "browser" or p.name in HEAVY for p in modules]
    pairs = zip(modules[:-1], modules[1:], heavy[:-1], heavy[1:], strict=True)
    together = [(a.name, b.name) for a, b, x, y in pairs if x and y and a.name not in LONG_FIRST]
    assert not together, f"heavy modules side by side: {together}"
    units = [i for i, p in enumerate(modules) if p.parent.name == "unit"]
    assert units == list(range(len(modules) - len(units), len(modules))), "unit modules last"
