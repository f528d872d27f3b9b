"""Markdown summary of bench/results.json for docs/BENCHMARKS.md:
`python -m bench.report [bench/results.json]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.run import RESULTS


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [f"Run of {doc['started']} ({doc['size']} size, {doc['seconds']:.0f} s): "
             f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
             f"load average at start {' '.join(m['load_average'])}.", "",
             "| scenario | runs | target | median | limit | met |", "|---|---|---|---|---|---|"]
    for res in doc["results"]:
        for t in res["targets"]:
            lines.append(f"| {res['scenario']} | {res['runs']} | {t['what']} | "
                         f"{_value(t['value'])} | {t['limit']} | "
                         f"{'yes' if t['met'] else '**no**'} ({t['met_runs']}/{t['runs']}) |")
        if res.get("failed_runs"):
            lines.append(f"| {res['scenario']} | {res['runs']} | runs that failed | "
                         f"{res['failed_runs']} | 0 | **no** |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [RESULTS]
    for path in paths:
        print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
