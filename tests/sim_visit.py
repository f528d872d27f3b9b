"""One simulated visit: a virtual clock, two parties, meter processes that crash or lose their
lease, and a shell that performs the meter's actions against the real ledger, with every fault
drawn from the seed. Nothing here judges the meter; tests/sim_check.py does, from the trace.

Trace records (tuples, in the order things happened):
  ("presence", t, both)                 the truth: both parties connected or not
  ("step", t, gen, event, actions)      an event fed to process `gen` and what its meter returned
  ("persisted", t, gen, state_dict)     a Persist action performed (the stored state)
  ("debit", t, gen, minute, key, code, balance_before)   a ledger attempt; code is the ledger's
                                        answer (ok, duplicate, insufficient_credits, ...) or
                                        not_applied (a timeout before the ledger saw it)
  ("crash", t, gen) / ("lease_lost", t, gen) / ("takeover", t, gen) / ("lost", t, event)
  ("money", t, kind, amount, code) / ("ended", t, gen, reason)
"""

from __future__ import annotations

import heapq
import json
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from billing.meter import (
    Clock,
    Debit,
    DebitOk,
    DebitRefused,
    DebitUnknown,
    End,
    Failed,
    HungUp,
    LeaseLost,
    Live,
    MeterConfig,
    MeterState,
    Paused,
    Persist,
    StaffEnded,
    TakenOver,
    WakeAt,
)

STEPS_MAX = 20_000  # a visit that needs more is running away
ENDERS = {"staff": StaffEnded, "hangup": HungUp, "failed": Failed}


def q(seconds: float) -> float:
    """Times are multiples of 1/64 s: sums and differences stay exact in binary floating point,
    so "exactly a minute left" really happens."""
    return round(seconds * 64) / 64


@dataclass
class Plan:
    seed: int
    index: int
    config: MeterConfig
    account: str
    funds: int
    presence: list[tuple[float, int, bool]]  # (t, party, connected)
    crashes: list[float]
    lease_losses: list[float]
    lease_s: float
    enders: list[tuple[float, str]]
    money: list[tuple[float, str, int]]  # (t, purchase | gift | spend, credits)
    faults: dict[str, float]  # probabilities


def draw_plan(seed: int, index: int) -> Plan:
    rng = random.Random(f"{seed}:{index}:plan")
    minute_s = rng.choice([60.0, 10.0, 2.0])
    price = rng.choice([50, 50, 30, 75])
    start = q(rng.uniform(0, 1000))
    length = minute_s * rng.randint(1, 8)
    if rng.random() < 0.3:
        length += q(rng.uniform(0, minute_s))  # a window that is not whole minutes long
    end = start + length
    config = MeterConfig(f"v{index}", price, minute_s, start, end,
                         warn_before_end_minutes=rng.choice([2, 2, 1]))
    if rng.random() < 0.2:
        funds = price * rng.randint(10, 30)
    else:
        funds = price * rng.randint(0, 8) + rng.randint(0, price - 1)

    def moment(late_s: float = 0.0) -> float:
        return q(rng.uniform(start - 0.05 * length, end + late_s))

    # A steady visit joins on a whole minute of the window and stays a while: the meter's
    # boundaries ("exactly a minute left") are then met exactly.
    steady = rng.random() < 0.25
    joined = start + minute_s * rng.randint(0, 2)
    presence = []
    for party in (0, 1):
        if rng.random() < 0.03 and not steady:
            continue  # never joins
        t = joined if steady else start + q(rng.expovariate(1 / (0.3 * minute_s)))
        up = True
        while t < end + minute_s:
            presence.append((t, party, up))
            mean = 1.5 * minute_s if up else rng.choice([0.05, 0.4, 2.0]) * minute_s
            t = q(t + (8 * minute_s if steady and t == joined else rng.expovariate(1 / mean)))
            up = not up
    crashes = [moment() for _ in range(rng.choice([0] * 6 + [1] * 3 + [2]))]
    lease_losses = [moment() for _ in range(rng.random() < 0.15)]
    enders = [(moment(minute_s), what) for what, p in
              (("staff", 0.05), ("hangup", 0.1), ("failed", 0.01)) if rng.random() < p]
    money = []
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        kind = rng.choice(["purchase", "gift", "spend", "spend"])
        amount = (500 * rng.randint(1, 2) if kind == "purchase"
                  else rng.choice([50, 100, price, rng.randint(1, 3 * price)]))
        money.append((moment(), kind, amount))
    faults = {"unknown": rng.choice([0.0, 0.05, 0.25]), "applied": rng.random(),
              "late": rng.choice([0.0, 0.1, 0.4]), "dup": rng.choice([0.0, 0.05, 0.2]),
              "midcrash": rng.choice([0.0, 0.0, 0.01, 0.05])}
    if steady:
        faults.update(unknown=0.0, late=0.0)
    return Plan(seed, index, config, f"fam_{index}", funds, presence, crashes, lease_losses,
                q(rng.uniform(0.02, 0.5) * minute_s), enders, money, faults)


@dataclass
class Run:
    trace: list[tuple] = field(default_factory=list)
    ended: str | None = None
    problems: list[str] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)


class VisitSim:
    """Runs one plan to its end. `step` is the meter (tests swap in broken ones)."""

    def __init__(self, plan: Plan, ledger, step: Callable) -> None:
        self.plan, self.config, self.ledger, self.step = plan, plan.config, ledger, step
        self.rng = random.Random(f"{plan.seed}:{plan.index}:faults")
        self.queue: list[tuple] = []
        self.seq = 0
        self.now = 0.0
        self.procs: dict[int, MeterState] = {}  # live processes and their in-memory state
        self.owner: int | None = None  # the process holding the lease
        self.gen = 0
        self.stored: dict | None = None
        self.parties = [False, False]
        self.both = False
        self.changed_at: float | None = None  # when `both` last changed
        self.backlog: list = []  # enders that came while no process held the lease
        self.wakes: set[tuple[int, float]] = set()
        self.run = Run()
        self.handlers = {"party": self._party, "deliver": self._deliver, "wake": self._wake,
                         "outcome": self._outcome, "crash": self._crash, "money": self._money,
                         "lease_lost": self._lease_lost, "takeover": self._takeover}

    def push(self, t: float, kind: str, *payload) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (t, self.seq, kind, payload))

    def go(self) -> Run:
        plan = self.plan
        self.gen = self.owner = 1
        self.procs[1] = MeterState()
        self.push(self.config.window_start, "wake", 1, self.config.window_start)  # the visit opens
        for t, party, up in plan.presence:
            self.push(t, "party", party, up)
        for t in plan.crashes:
            self.push(t, "crash")
        for t in plan.lease_losses:
            self.push(t, "lease_lost")
        for t, what in plan.enders:
            self.push(t, "deliver", ENDERS[what](t))
        for t, kind, amount in plan.money:
            self.push(t, "money", kind, amount)
        steps = 0
        while self.queue and self.run.ended is None:
            self.now, _, kind, payload = heapq.heappop(self.queue)
            self.handlers[kind](*payload)
            steps += 1
            if steps > STEPS_MAX:
                self.run.problems.append(f"runaway: more than {STEPS_MAX} steps")
                break
        if self.run.ended is None and not self.run.problems:
            self.run.problems.append("the visit never ended")
        return self.run

    # --- the world ---------------------------------------------------------------------

    def _party(self, party: int, up: bool) -> None:
        self.parties[party] = up
        both = all(self.parties)
        if both == self.both:
            return
        self.both, self.changed_at = both, self.now
        self.run.trace.append(("presence", self.now, both))
        report = Live(self.now) if both else Paused(self.now)
        delay = q(self.rng.uniform(0, 0.4) * self.config.minute_s) if self._chance("late") else 0
        self.push(self.now + delay, "deliver", report)
        if self._chance("dup"):
            self.push(self.now + delay + q(self.rng.uniform(0, 0.3) * self.config.minute_s),
                      "deliver", report)

    def _deliver(self, event) -> None:
        if self.owner is not None:
            self._feed(self.owner, event)
        elif isinstance(event, Live | Paused):
            self.run.trace.append(("lost", self.now, event))  # the new owner asks afresh
        else:
            self.backlog.append(event)

    def _wake(self, gen: int, at: float) -> None:
        self.wakes.discard((gen, at))
        if gen in self.procs:
            self._feed(gen, Clock(self.now))

    def _outcome(self, gen: int, event) -> None:
        if gen in self.procs:
            self._feed(gen, event)

    def _crash(self) -> None:
        if self.owner is not None:
            self._kill(self.owner)

    def _kill(self, gen: int) -> None:
        del self.procs[gen]
        self.run.trace.append(("crash", self.now, gen))
        self.run.stats["crashes"] += 1
        if gen == self.owner:
            self.owner = None
            self.push(self.now + self.plan.lease_s, "takeover")

    def _lease_lost(self) -> None:
        if self.owner is None:
            return
        gen, self.owner = self.owner, None
        self.run.trace.append(("lease_lost", self.now, gen))
        self.run.stats["lease_losses"] += 1
        self._feed(gen, LeaseLost(self.now))  # the process lives on, and must keep quiet
        self.push(self.now + self.plan.lease_s, "takeover")

    def _takeover(self) -> None:
        self.gen += 1
        gen = self.owner = self.gen
        self.procs[gen] = (MeterState.from_dict(self.stored) if self.stored is not None
                           else MeterState())
        self.run.trace.append(("takeover", self.now, gen))
        self.run.stats["takeovers"] += 1
        self._feed(gen, TakenOver(self.now))
        if self.owner == gen and self.changed_at is not None:
            # The new owner reads the parties' presence as the visit row keeps it: connected
            # or not, since the moment that last changed (before the takeover).
            self._feed(gen, (Live if self.both else Paused)(self.changed_at))
        backlog, self.backlog = self.backlog, []
        for event in backlog:
            self._deliver(event)

    def _money(self, kind: str, amount: int) -> None:
        code = self.ledger.move(self.plan, kind, amount, self.now, f"{self.seq}")
        self.run.trace.append(("money", self.now, kind, amount, code))

    def _chance(self, fault: str) -> bool:
        return self.rng.random() < self.plan.faults[fault]

    # --- the shell -----------------------------------------------------------------------

    def _feed(self, gen: int, event) -> None:
        try:
            state, actions = self.step(self.config, self.procs[gen], event)
        except Exception as error:  # a meter that raises is a failing meter, with a trace
            self.run.problems.append(f"the meter raised {error!r} on {event}")
            self.queue.clear()
            return
        self.procs[gen] = state
        self.run.trace.append(("step", self.now, gen, event, tuple(actions)))
        self.run.stats["steps"] += 1
        crash_before = None
        if gen == self.owner and actions and self._chance("midcrash"):
            crash_before = self.rng.randrange(len(actions))
        for j, action in enumerate(actions):
            if j == crash_before:
                self._kill(gen)  # dies half-way through performing the step
                return
            self._perform(gen, action)

    def _perform(self, gen: int, action) -> None:
        if isinstance(action, Persist):
            self.stored = json.loads(json.dumps(action.state.to_dict()))
            self.run.trace.append(("persisted", self.now, gen, self.stored))
        elif isinstance(action, Debit):
            self._debit(gen, action)
        elif isinstance(action, WakeAt):
            at = max(action.at, self.now)  # a timer in the past fires at once
            if (gen, at) not in self.wakes:
                self.wakes.add((gen, at))
                self.push(at, "wake", gen, at)
        elif isinstance(action, End) and self.run.ended is None:
            self.run.ended = action.reason
            self.run.trace.append(("ended", self.now, gen, action.reason))

    def _debit(self, gen: int, action: Debit) -> None:
        minute_s = self.config.minute_s
        timeout = self._chance("unknown")
        if timeout and not self._chance("applied"):
            code, before, after = "not_applied", None, None
        else:
            code, before, after = self.ledger.debit(self.plan, action, self.now)
        self.run.trace.append(("debit", self.now, gen, action.minute, action.key, code, before))
        self.run.stats["debit_attempts"] += 1
        if timeout:
            self.run.stats["timeouts"] += 1
            at = self.now + q(self.rng.uniform(0.05, 0.5) * minute_s)
            outcome = DebitUnknown(at, action.minute)
        else:
            at = self.now + (q(self.rng.uniform(0, 0.2) * minute_s) if self._chance("late") else 0)
            if code in ("ok", "duplicate"):
                outcome = DebitOk(at, action.minute, after)
            elif code == "insufficient_credits":
                outcome = DebitRefused(at, action.minute)
            else:
                self.run.problems.append(f"the ledger answered {code} to {action}")
                outcome = DebitUnknown(at, action.minute)
        self.push(at, "outcome", gen, outcome)
        if self._chance("dup"):
            self.push(at + q(self.rng.uniform(0, 0.3) * minute_s), "outcome", gen, outcome)
