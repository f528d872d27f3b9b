"""Run the benchmarks: `python -m bench.run [--size full|tiny] [--runs N] [--only a,b]`.

Each scenario runs in a fresh process of its own (`python -m bench.run --one NAME`), N times;
the table and bench/results.json give, for every number, the median over the runs (this machine
is shared and noisy) and the runs themselves. Charts are drawn by bench/charts.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench import common

SCENARIOS = ("fanout", "sends", "idle", "connect", "signalling", "meters", "cluster", "relay",
             "soak", "simulator", "links")
RESULTS = Path(__file__).resolve().parent / "results.json"


def run_one(name: str, size: str) -> dict[str, Any]:
    """In this process: pin to the load core, run the scenario, return its result."""
    common.pin_self(common.LOAD_CPU)
    module = importlib.import_module(f"bench.scenarios.{name}")
    started = time.monotonic()
    result = asyncio.run(module.run(size))
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


# `make bench` must finish within 15 minutes: every scenario runs once, then the scenarios are
# run again (shortest first), round after round, while the next run (expected to last as long
# as the scenario's last one) still ends within the budget, up to --runs each. So a fast
# machine gets three runs of everything and a slow or busy one fewer of the long scenarios,
# instead of a fixed count tuned to one machine.
BUDGET_S = {"full": 840.0, "tiny": float("inf")}


def schedule(names: list[str], wanted: int, budget_s: float, run: Any,
             clock: Any = time.monotonic) -> dict[str, list[dict[str, Any]]]:
    """Run every name once, then more rounds while they fit in `budget_s`; `run(name, i)`
    runs one and returns its result. Returns each name's runs."""
    started = clock()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    took: dict[str, float] = {}
    for round_no in range(max(1, wanted)):
        # After the first round the shortest go first, so that a long scenario left over
        # does not crowd out the repeats of several short ones.
        for name in sorted(names, key=took.__getitem__) if round_no else names:
            if round_no and clock() - started + took[name] > budget_s:
                continue  # would overrun: the earlier runs stand
            t0 = clock()
            runs[name].append(run(name, round_no))
            took[name] = clock() - t0
    return runs


def run_isolated(name: str, size: str, timeout_s: float) -> dict[str, Any]:
    returncode, stdout, stderr = run_group(
        [sys.executable, "-m", "bench.run", "--one", name, "--size", size], timeout_s)
    if returncode != 0:
        return {"scenario": name, "size": size, "error": stderr[-3000:], "rows": [],
                "targets": [], "notes": []}
    return json.loads(stdout.strip().splitlines()[-1])


def run_group(argv: list[str], timeout_s: float) -> tuple[int, str, str]:
    """Run `argv` in a process group of its own; when it ends, times out or this call fails,
    whatever is left of the group is killed. A scenario's servers (Kinwire, Janus, coturn) are
    its children: killing the scenario alone on a timeout left all three running for the rest
    of a suite (seen 11 minutes later). Returns (returncode, stdout, stderr)."""
    with subprocess.Popen(argv, cwd=common.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, stdout, stderr


def _median_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows matched by (case, system) across runs; numbers become their median."""
    keyed: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        for row in run.get("rows", []):
            keyed.setdefault((row.get("case", ""), row.get("system", "")), []).append(row)
    merged = []
    for rows in keyed.values():
        out: dict[str, Any] = {}
        for field in rows[0]:
            values = [r.get(field) for r in rows]
            numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)
                       and not (isinstance(v, float) and math.isnan(v))]
            out[field] = round(median(numbers), 3) if numbers and len(numbers) == len(values) \
                else values[0]
        merged.append(out)
    return merged


def _median_targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keyed: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for t in run.get("targets", []):
            keyed.setdefault(t["what"], []).append(t)
    return [{"what": what, "value": round(median(t["value"] for t in ts), 3),
             "limit": ts[0]["limit"], "met_runs": sum(t["met"] for t in ts), "runs": len(ts),
             "met": sum(t["met"] for t in ts) * 2 > len(ts)} for what, ts in keyed.items()]


def aggregate(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    return {"scenario": name, "runs": len(runs), "failed_runs": len(runs) - len(good),
            "rows": _median_rows(good), "targets": _median_targets(good),
            "notes": good[0].get("notes", []) if good else [],
            "errors": [r["error"] for r in runs if "error" in r],
            "each_run": runs}


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        lines.append(f"\n== {res['scenario']} ({res['runs']} runs, medians)")
        for row in res["rows"]:
            fields = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("case", "system"))
            lines.append(f"  {row.get('case', ''):<28} {row.get('system', ''):<10} {fields}")
        for t in res["targets"]:
            mark = "MET " if t["met"] else "MISS"
            lines.append(f"  [{mark}] {t['what']}: {t['value']} (target {t['limit']}; "
                         f"met in {t['met_runs']}/{t['runs']} runs)")
        for err in res["errors"]:
            lines.append("  ERROR: " + err.strip().splitlines()[-1] if err.strip() else "  ERROR")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {"cpu": cpu, "cores": common.cpus(), "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "load_average": Path("/proc/loadavg").read_text().split()[:3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__)
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-charts", action="store_true")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="repeat runs only while they fit (default: 840 s at full size)")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.size)))
        return 0
    names = [n for n in args.only.split(",") if n] or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    started = time.time()

    def one(name: str, i: int) -> dict[str, Any]:
        print(f"[bench] {name} run {i + 1} of up to {args.runs} ({args.size}, "
              f"{time.time() - started:.0f} s in)", file=sys.stderr, flush=True)
        return run_isolated(name, args.size, timeout_s=900)

    budget = args.budget_s if args.budget_s is not None else BUDGET_S[args.size]
    each = schedule(names, args.runs, budget, one)
    results = [aggregate(name, each[name]) for name in names]
    doc = {"machine": machine(), "size": args.size, "runs": args.runs,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
           "seconds": round(time.time() - started, 1), "results": results}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(table(results))
    print(f"\nwritten {args.out} in {doc['seconds']} s")
    if not args.no_charts:
        from bench import charts

        for path in charts.draw(doc, args.out.parent / "charts"):
            print(f"chart {path}")
    failed = sum(r["failed_runs"] for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
