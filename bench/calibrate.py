"""Host calibration: a fixed pure-Python workload whose CPU time is the unit for figures that
would otherwise measure the host as much as the code (a CPU-bound run timed in seconds).

One round of `reference_round` is the same work on every host and in every run: an event queue
on a virtual clock feeding frozen dataclasses through `replace`, dicts keyed by f-strings, a
seeded random.Random; the interpreter work the billing simulator does, without its SQLite. A
figure divided by the round's CPU seconds, both timed in the same process on the same core,
compares across hosts as far as the host's speed on this workload tracks its speed on the
figure's (docs/BENCHMARKS.md, "The billing simulator"). Never change the workload: every ratio
stated against it would silently change with it.
"""

from __future__ import annotations

import heapq
import random
import time
from dataclasses import dataclass, replace
from statistics import median

EVENTS = 250_000  # one round: ~0.5 s of CPU on the 2026-12 host


@dataclass(frozen=True)
class _State:
    paid: int = 0
    seconds: float = 0.0
    connected: bool = False


def reference_round(seed: int = 1) -> int:
    """The fixed workload; returns a checksum so that nothing is optimised away."""
    rng = random.Random(seed)
    states: dict[str, _State] = {}
    ledger: dict[str, int] = {}
    queue: list[tuple[float, int, str]] = []
    for i in range(200):
        heapq.heappush(queue, (rng.random(), i, f"visit-{i}"))
    for n in range(EVENTS):
        t, _, visit = heapq.heappop(queue)
        state = states.get(visit, _State())
        if rng.random() < 0.3:
            state = replace(state, connected=not state.connected)
        elif state.connected:
            state = replace(state, seconds=state.seconds + 1.5)
            if state.seconds >= 60.0:
                state = replace(state, paid=state.paid + 1, seconds=state.seconds - 60.0)
                ledger[f"{visit}:minute:{state.paid}"] = 50
        states[visit] = state
        heapq.heappush(queue, (t + rng.expovariate(1.0), n, visit))
    return sum(ledger.values()) + sum(s.paid for s in states.values())


def round_cpu_s(rounds: int) -> tuple[float, list[float]]:
    """The median CPU seconds of one round over `rounds` rounds, and each round's."""
    each = []
    for _ in range(rounds):
        cpu = time.process_time()
        reference_round()
        each.append(time.process_time() - cpu)
    return median(each), each
