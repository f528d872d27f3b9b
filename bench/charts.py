"""PNG charts of bench/results.json (matplotlib, headless Agg backend).

`python -m bench.charts [results.json] [out_dir]` redraws them without re-running anything.
Fan-out, idle and connect have charts of their own; every other scenario gets a generic grouped
bar chart of its main figure (FIELD; else its rows' first number; x: case, one bar per system),
so a new scenario is charted from the day it exists.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLOURS = {"kinwire": "#1f6feb", "baseline": "#8b949e", "nats": "#2da44e"}
SKIP_FIELDS = {"clients", "sockets", "published", "cycles", "runs"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(doc: dict[str, Any], text: str) -> str:
    load = doc.get("machine", {}).get("load_average", ["?"])[0]
    # Scenarios get different run counts within make bench's budget: results.json has each.
    return f"{text}\n{doc.get('size', '')} size, medians of up to {doc.get('runs', '?')} runs, " \
           f"load average {load} at start"


def _systems(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.setdefault(row.get("system", ""), None)
    return list(seen)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _lines(doc: dict[str, Any], rows: list[dict[str, Any]], x: str, y: str, label: str,
           title: str, path: Path, limit: float | None = None, log: bool = False) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for system in _systems(rows):
        points = sorted((r[x], r[y]) for r in rows
                        if r.get("system") == system and _number(r.get(y)))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=system,
                    color=COLOURS.get(system))
    if limit is not None:
        ax.axhline(limit, color="#cf222e", linestyle="--", linewidth=1, label="target")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(label)
    ax.set_title(_title(doc, title), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(doc: dict[str, Any], rows: list[dict[str, Any]], y: str, label: str, title: str,
          path: Path, limit: float | None = None) -> Path:
    plt = _plt()
    cases = list(dict.fromkeys(r.get("case", "") for r in rows))
    systems = _systems(rows)
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cases) * len(systems) ** 0.5), 4.2))
    for i, system in enumerate(systems):
        values = [next((r[y] for r in rows if r.get("case") == case
                        and r.get("system") == system and _number(r.get(y))), 0)
                  for case in cases]
        positions = [c + (i - (len(systems) - 1) / 2) * width for c in range(len(cases))]
        bars = ax.bar(positions, values, width, label=system, color=COLOURS.get(system))
        ax.bar_label(bars, fmt="%.4g", fontsize=7)
    if limit is not None:
        ax.axhline(limit, color="#cf222e", linestyle="--", linewidth=1, label="target")
    ax.set_xticks(range(len(cases)), cases, fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(_title(doc, title), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fanout(doc: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> list[Path]:
    return [
        _lines(doc, rows, "clients", "deliveries_per_s", "deliveries / s",
               "Fan-out: deliveries per second by connected clients",
               out / "fanout_deliveries.png"),
        _lines(doc, rows, "clients", "p99_ms", "publish-to-receive p99 (ms)",
               "Fan-out: p99 latency at one frame per client per second",
               out / "fanout_p99.png", limit=50.0, log=True),
    ]


def _idle(doc: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> list[Path]:
    return [_bars(doc, rows, "kb_per_socket", "KB per socket (RSS)",
                  "Idle sockets: memory per authenticated idle socket", out / "idle_memory.png",
                  limit=50.0)]


def _connect(doc: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> list[Path]:
    return [_bars(doc, rows, "connects_per_s", "cycles / s",
                  "Connect: connect + auth + sync + close per second",
                  out / "connect_rate.png")]


# The figure each generic chart shows, where the rows' first number is only a count.
FIELD = {"sends": "p99_ms", "signalling": "hop_p99_ms", "meters": "lateness_p99_ms",
         "cluster": "p99_ms", "relay": "fps_min", "simulator": "rounds_per_10k",
         "links": "fps_vs_clean"}


def _generic(doc: dict[str, Any], name: str, rows: list[dict[str, Any]],
             out: Path) -> list[Path]:
    field = FIELD.get(name)
    shown = [r for r in rows if _number(r.get(field))]  # e.g. not the raw-insert rows
    if shown:
        rows = shown
    else:
        field = next((k for k in rows[0] if k not in ("case", "system")
                      and k not in SKIP_FIELDS and _number(rows[0][k])), None)
    if field is None:
        return []
    return [_bars(doc, rows, field, field.replace("_", " "), f"{name}: {field}",
                  out / f"{name}.png")]


SPECIFIC = {"fanout": _fanout, "idle": _idle, "connect": _connect}


def draw(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for result in doc.get("results", []):
        rows = result.get("rows") or []
        if not rows:
            continue
        name = result["scenario"]
        chart = SPECIFIC.get(name)
        paths += chart(doc, rows, out_dir) if chart else _generic(doc, name, rows, out_dir)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    source = Path(args[0]) if args else Path(__file__).resolve().parent / "results.json"
    out = Path(args[1]) if len(args) > 1 else source.parent / "charts"
    for path in draw(json.loads(source.read_text()), out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
