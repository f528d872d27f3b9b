"""One simulated visit: a virtual clock, two parties, meter processes that crash or lose their
lease, and a shell that performs the meter's actions against the real ledger, with every fault
drawn from the seed. Nothing here judges the meter; tests/support/sim_check.py does, from the trace.

The world (docs/visits.md, "Trust"): each party comes and goes (its socket joined and its
media flowing, or not); in most visits (`remote`) the parties' sockets are held by another
process than the meter's, which renews its liveness lease every `renew_s` and the shell sees
each renewal `proof_lag_s` later (meter.Proven: before every event the shell feeds, and when
the meter waits for one, meter.proof_wanted); that process may crash, and the party is
gone until its client reconnects elsewhere (to a process renewing on its own schedule), while
the shell learns of the crash only when that process's liveness lease runs out (up to
`node_lease_s` later). In relay mode the process relaying the call (the server's observation)
may die the same way: the media stops until the relay is placed again elsewhere, often before
the dead process's lease runs out. The kiosk's outbound media may stall, which it reports once
the stall has lasted `stall_s`; the family's client may lie (never report connected, or
always). The shell reports what it knows as meter.Observed facts (the family's own report, the
kiosk's, and in relay mode the server's), with the processes holding them as it last read
them: a report that names another process than the last is a move (meter.Observed.moved).

Trace records (tuples, in the order things happened):
  ("truth", t, connected)               the truth: both parties there and the person's media
                                        really flowing (what a family should pay for)
  ("allow", t, seconds)                 a lag the product allows to be billed: a stall's
                                        threshold, a report delivered late
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
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from billing.meter import (
    Clock,
    Debit,
    DebitOk,
    DebitRefused,
    DebitUnknown,
    End,
    Facts,
    Failed,
    HungUp,
    LeaseLost,
    MeterConfig,
    MeterState,
    Observed,
    Persist,
    Proven,
    StaffEnded,
    TakenOver,
    WakeAt,
    proof_wanted,
)

STEPS_MAX = 20_000  # a visit that needs more is running away
SERVER = 2  # the holders' index of the server's observation (relay mode), after the parties
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
    liar: str | None = None  # the family's client: None (honest), "silent" or "always"
    holder_crashes: list[tuple[float, int, float, float]] = field(default_factory=list)
    # (t, party, back after s, the shell learns of it after s <= node_lease_s); party 2 is the
    # server's observation in relay mode (the process relaying the call: its death stops the
    # media until the relay is placed again, elsewhere)
    stalls: list[tuple[float, float]] = field(default_factory=list)  # the kiosk's, [start, end)
    node_lease_s: float = 1.0
    stall_s: float = 1.0
    remote: bool = False  # the parties' sockets are on another process than the meter's
    renew_s: float = 1 / 3  # that process renews its liveness lease this often
    proof_lag_s: float = 0.0  # and the shell sees a renewal this much later


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
                         warn_before_end_minutes=rng.choice([2, 2, 1]),
                         media=rng.choice(["direct"] * 4 + ["relay"]))
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
    liar = rng.choice([None, None, "silent", "always"])
    node_lease_s = q(rng.uniform(0.02, 0.1) * minute_s)
    renew_s = max(1 / 64, q(node_lease_s / 3))
    remote = rng.random() < 0.75
    # A holder's crash is another process's than the meter's (the meter's own is `crashes`).
    holder_crashes = [(moment(), rng.randrange(2), q(rng.uniform(0.01, 1.0) * minute_s),
                       q(rng.uniform(0, node_lease_s)))
                      for _ in range(rng.choice([0, 0, 1, 2]) if remote else 0)]
    if remote and config.media == "relay":
        # From their own stream, so that every other draw (and every recorded seed's replay)
        # stays as it was before relays could die.
        relay_rng = random.Random(f"{seed}:{index}:relay")
        # Half of them placed again quickly, often before the dead process's lease runs out:
        # the observation moves under unchanged facts (meter.Observed.moved).
        holder_crashes += [(q(relay_rng.uniform(start - 0.05 * length, end)), SERVER,
                            max(1 / 64, q(relay_rng.choice([0.1, 1.0]) * relay_rng.random()
                                          * minute_s)),
                            q(relay_rng.uniform(0, node_lease_s)))
                           for _ in range(relay_rng.choice([0, 1, 1, 2]))]
    stall_s = q(rng.uniform(0.05, 0.3) * minute_s)
    stalls = []
    for _ in range(rng.choice([0, 0, 1, 2])):
        began = moment()
        stalls.append((began, began + q(rng.uniform(0.02, 2.0) * minute_s)))
    return Plan(seed, index, config, f"fam_{index}", funds, presence, crashes, lease_losses,
                q(rng.uniform(0.02, 0.5) * minute_s), enders, money, faults, liar,
                holder_crashes, stalls, node_lease_s, stall_s, remote, renew_s,
                q(rng.uniform(0, renew_s / 2)))


@dataclass(eq=False)
class Holder:
    """A process holding a party's socket: it renews its liveness lease every `renew_s` from
    `phase`, until it dies."""
    phase: float
    died_at: float | None = None


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
        # each party's own schedule: there, media flowing (the relay, SERVER: always wanted)
        self.want = [False, False, True]
        self.gone_until = [0.0, 0.0, 0.0]  # its holder process crashed: gone until it is back
        self.detected = [False, False, False]  # ... and the shell knows (the lease ran out)
        self.stalled: float | None = None  # the kiosk's media stalled since then
        self.stall_reported = False  # the kiosk said `sending: false`
        self.truth = False
        self.facts = Facts()  # what the shell last reported
        self.holder = [Holder(q(self.rng.uniform(0, plan.renew_s))) for _ in (0, 1)]
        # the relay's process, on its own stream (the fault stream's draws stay as they were)
        self.holder.append(Holder(q(random.Random(f"{plan.seed}:{plan.index}:relay-phase")
                                    .uniform(0, plan.renew_s))))
        self.known = list(self.holder)  # the holders as the shell last read them
        self.known_at: float | None = None  # ... from the report of this instant
        self.reported = list(self.holder)  # the holders the last report named
        self.proof_fed: float | None = None  # the latest Proven fed to the lease holder
        self.proofs: set[tuple[int, float]] = set()  # proof deliveries scheduled
        self.changed_at: float | None = None  # when the reported facts last changed
        self.backlog: list = []  # enders that came while no process held the lease
        self.wakes: set[tuple[int, float]] = set()
        self.skipped: dict[int, float] = {}  # per meter process: the due point a wake skipped
        self.run = Run()
        if plan.liar:
            self.run.stats[f"family {plan.liar}"] += 1
        self.run.stats["remote"] += plan.remote
        self.handlers = {"party": self._party, "deliver": self._deliver, "wake": self._wake,
                         "outcome": self._outcome, "crash": self._crash, "money": self._money,
                         "lease_lost": self._lease_lost, "takeover": self._takeover,
                         "holder_crash": self._holder_crash, "back": self._back,
                         "detect": self._detect, "stall": self._stall,
                         "stall_seen": self._stall_seen, "unstall": self._unstall,
                         "report": self._report, "proof": self._proof_arrives}

    def push(self, t: float, kind: str, *payload) -> None:
        self.seq += 1
        # Reports are made after everything else that happens at the same instant (phase 1):
        # the shell reads the row once per pass, so one instant gives one report, and two
        # reports never share a stamp (a late copy of the older would look fresh).
        heapq.heappush(self.queue, (t, kind == "report", self.seq, kind, payload))

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
        for t, party, back_s, detect_s in plan.holder_crashes:
            self.push(t, "holder_crash", party, back_s, detect_s)
        for began, ended in plan.stalls:
            self.push(began, "stall", began, ended)
        for t, kind, amount in plan.money:
            self.push(t, "money", kind, amount)
        steps = 0
        while self.queue and self.run.ended is None:
            self.now, _, _, kind, payload = heapq.heappop(self.queue)
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
        self.want[party] = up
        self._changed()

    def _there(self, party: int) -> bool:
        return self.want[party] and self.now >= self.gone_until[party]

    def _holder_crash(self, party: int, back_s: float, detect_s: float) -> None:
        """The process holding the party's socket dies; its client is back after `back_s`
        (on another process); the shell learns of the death after `detect_s`."""
        if not self._there(party):
            return
        self.gone_until[party] = self.now + back_s
        self.detected[party] = False
        self.holder[party].died_at = self.now  # its lease is renewed no more
        self.run.trace.append(("holder_crash", self.now, party))
        self.run.stats["holder_crashes" if party != SERVER else "relay_crashes"] += 1
        # Back elsewhere before the shell knew, the facts read as before; the report names the
        # new holder, and the meter counts nothing its old one did not prove (meter: moved).
        self.push(self.now + back_s, "back", party)
        self.push(self.now + detect_s, "detect", party)
        self._changed()

    def _detect(self, party: int) -> None:
        if self.now < self.gone_until[party]:
            self.detected[party] = True
            self._changed()

    def _back(self, party: int) -> None:
        if self.now >= self.gone_until[party]:
            self.detected[party] = False
            # held by another process, renewing on its own time
            self.holder[party] = Holder(q(self.rng.uniform(0, self.plan.renew_s)))
            self._changed()

    def _stall(self, began: float, ended: float) -> None:
        if self.stalled is not None:
            return
        self.stalled = began
        self.run.stats["stalls"] += 1
        self.run.trace.append(("allow", self.now, min(self.plan.stall_s, ended - began)))
        self.push(began + self.plan.stall_s, "stall_seen", began)
        self.push(ended, "unstall", began)
        self._changed()

    def _stall_seen(self, began: float) -> None:
        if self.stalled == began:
            self.stall_reported = True  # the kiosk: its outbound media has not advanced
            self._changed()

    def _unstall(self, began: float) -> None:
        if self.stalled == began:
            self.stalled, self.stall_reported = None, False
            self._changed()

    def _seen(self, party: int) -> bool:
        """The party as the shell sees it: there, unless its dead holder's lease ran out."""
        return self.want[party] and not self.detected[party]

    def _facts(self) -> Facts:
        family, person = self._seen(0), self._seen(1)
        media = self.want[0] and self.want[1]  # media flows peer to peer, holders or not
        honest = "connected" if media else "joined"
        said = {None: honest, "silent": "joined", "always": "connected"}[self.plan.liar]
        # The server's observation (relay mode): as its process last recorded it, until that
        # process is found dead; a relay placed again records it afresh.
        relayed = self.config.media != "relay" or self._seen(SERVER)
        return Facts(family=said if family else "absent",
                     person=("connected" if media else "joined") if person else "absent",
                     sending=not self.stall_reported,
                     server=media and not self.stall_reported and relayed,
                     remote=self.plan.remote)

    def _relayed(self) -> bool:
        """The media really passes: in relay mode, only while the relay's process lives."""
        return self.config.media != "relay" or self._there(SERVER)

    def _changed(self) -> None:
        truth = self._there(0) and self._there(1) and self.stalled is None and self._relayed()
        if truth != self.truth:
            self.truth = truth
            self.run.trace.append(("truth", self.now, truth))
        self.push(self.now, "report")

    def _report(self) -> None:
        facts = self._facts()
        holders = tuple(self.holder)
        if facts == self.facts and all(a is b for a, b in zip(holders, self.reported, strict=True)):
            return
        self.facts, self.changed_at, self.reported = facts, self.now, holders
        report = (Observed(self.now, facts), holders)  # the row names each party's holder
        delay = q(self.rng.uniform(0, 0.4) * self.config.minute_s) if self._chance("late") else 0
        if delay:
            self.run.trace.append(("allow", self.now, delay))
        self.push(self.now + delay, "deliver", report)
        if self._chance("dup"):
            self.push(self.now + delay + q(self.rng.uniform(0, 0.3) * self.config.minute_s),
                      "deliver", report)

    def _deliver(self, event) -> None:
        holders = None
        if isinstance(event, tuple):  # a report, with the holders it read
            event, holders = event
        if self.owner is not None and isinstance(event, Observed):
            # a pass: the old holders proven up to the change, the change, the new ones (the
            # owner may die half-way: then the rest is lost with it). A party held by another
            # process than the shell last read (moved): its old one's proofs count only if it
            # left that process by the process's death, the facts unchanged (as the shell does).
            state = self.procs[self.owner]
            left = [self.known[p] for p in self._held(self.owner)
                    if holders[p] is not self.known[p]]
            moved = state.connected and bool(left)
            if not moved or (event.facts == state.facts
                             and all(h.died_at is not None for h in left)):
                self._prove(self.owner, upto=event.at)
            if self.known_at is None or event.at > self.known_at:
                self.known, self.known_at = list(holders), event.at
            if self.owner is not None:
                self._feed(self.owner, replace(event, moved=moved))
                if self.owner is not None:
                    self._prove(self.owner)
            else:
                self.run.trace.append(("lost", self.now, event))
        elif self.owner is not None:
            self._feed(self.owner, event)
        elif isinstance(event, Observed):
            self.run.trace.append(("lost", self.now, event))  # the new owner asks afresh
        else:
            self.backlog.append(event)

    def _wake(self, gen: int, at: float) -> None:
        self.wakes.discard((gen, at))
        if gen not in self.procs:
            return
        wanted = proof_wanted(self.config, self.procs[gen]) if self.plan.remote else None
        if wanted is not None and at >= wanted and wanted != self.skipped.get(gen) and (
                self.proof_fed is None or self.proof_fed < wanted):
            # The minute falls due unproven: as the real shell, skip this pass once; the
            # proof's arrival feeds it, or a lease later a look anyway.
            self.skipped[gen] = wanted
            again = self.now + self.plan.node_lease_s
            if (gen, again) not in self.wakes:
                self.wakes.add((gen, again))
                self.push(again, "wake", gen, again)
            return
        self._prove(gen)
        if gen in self.procs:
            self._feed(gen, Clock(self.now))

    # --- proofs of the holders' liveness (Facts.remote) -----------------------------------

    def _renewal(self, holder: Holder, at: float) -> float:
        """The holder's last renewal at or before `at`."""
        if holder.died_at is not None:
            at = min(at, holder.died_at)
        every = self.plan.renew_s
        return holder.phase + math.floor((at - holder.phase) / every) * every

    def _held(self, gen: int) -> list[int]:
        """The parties present as the meter knows them, and in relay mode the server's
        observation while it says connected: whose holders it must be proven."""
        facts = self.procs[gen].facts
        held = [p for p, state in enumerate((facts.family, facts.person)) if state != "absent"]
        return [*held, SERVER] if self.config.media == "relay" and facts.server else held

    def _prove(self, gen: int, upto: float | None = None) -> None:
        """Feed the holders' latest proof, as the shell's pass does (only while it counts: the
        call connected and held elsewhere)."""
        if gen != self.owner or gen not in self.procs or not self.plan.remote \
                or not self.procs[gen].connected:
            return
        held = self._held(gen)
        if not held:
            return
        proven = min(self._renewal(self.known[p], self.now - self.plan.proof_lag_s)
                     for p in held)
        if upto is not None:
            proven = min(proven, upto)
        if self.proof_fed is None or proven > self.proof_fed:
            self.proof_fed = proven
            self._feed(gen, Proven(proven))

    def _await_proof(self, gen: int) -> None:
        """The meter waits for a proof (meter.proof_wanted): deliver it when the holders'
        renewals reach that moment and the shell has seen them (never, if one died first)."""
        wanted = proof_wanted(self.config, self.procs[gen]) if self.plan.remote else None
        if wanted is None or (self.proof_fed is not None and wanted <= self.proof_fed):
            return
        seen = [self.known[p] for p in self._held(gen)]
        if not seen or any(h.died_at is not None for h in seen):
            return
        every = self.plan.renew_s
        at = max(h.phase + math.ceil((wanted - h.phase) / every) * every
                 for h in seen) + self.plan.proof_lag_s
        if (gen, at) not in self.proofs:
            self.proofs.add((gen, at))
            self.push(max(at, self.now), "proof", gen, at)

    def _proof_arrives(self, gen: int, at: float) -> None:
        self.proofs.discard((gen, at))
        if gen in self.procs:
            self._prove(gen)

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
        self.proof_fed = None
        if self.owner == gen and self.changed_at is not None:
            # The new owner reads what the visit row keeps: the facts, since the moment they
            # last changed (before the takeover).
            self.known, self.known_at = list(self.reported), self.changed_at
            self._feed(gen, Observed(self.changed_at, self.facts))
            self._prove(gen)
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
        if gen == self.owner and self.plan.remote and gen in self.procs:
            self._await_proof(gen)
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
