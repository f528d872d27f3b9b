"""The simulator's judge: DESIGN.md's meter rules restated, independently of billing/meter.py, and
applied to a visit's trace and its ledger rows.

`Rules` is a second, deliberately plain statement of the rules. Walking the trace, it is fed
what the process holding the lease was fed and says what that step must do (which minute to
debit, which warning, which end, by when to wake); it resumes after a takeover from its own
copy of the state taken when the meter's Persist was performed. Then the ledger must show
exactly the minutes that were decided (each once, under its key), and they must pay for the
connected time the rules billed: (m - 1) minutes < billed time <= m minutes.

`check_truth` judges against the world instead (the "truth" records: both parties there and
the person's media really flowing): billed seconds (the rules', and the meter's own stored
count) never exceed connected-with-media seconds plus the lags the product allows (a stall's
threshold, a late report; a crashed holder's last seconds are never billed: its time counts
up to its last renewal, and a party back on another process counts again only from then),
to the credit; and in a visit without meter faults no honest minute goes unbilled.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from billing.ledger import SystemAccount
from billing.meter import (
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
    Observed,
    Paused,
    Persist,
    Proven,
    StaffEnded,
    TakenOver,
    WakeAt,
    Warn,
)

EPS = 1e-6
PROBLEMS_MAX = 8  # reported per visit; the walk itself always goes to the end


@dataclass
class Expect:
    t: float | None = None
    debits: list[int] = field(default_factory=list)
    decided: bool = False  # a new minute, which must be persisted before it is sent
    warns: list[str] = field(default_factory=list)
    end: str | None = None
    wake: float | None = None  # the latest moment the meter may ask to be woken at


class Rules:
    def __init__(self, config: MeterConfig) -> None:
        self.c = config
        self.paid = 0
        self.billed = 0.0  # connected seconds billed
        self.on = False  # both parties connected, as reported
        self.mark: float | None = None  # billed up to this moment
        self.pending: int | None = None
        self.decided = 0  # the highest minute ever decided
        self.warned: set[str] = set()
        self.live_once = False
        self.met = False  # both parties were ever present at once (else the visit is missed)
        self.now: float | None = None
        self.last_report: float | None = None
        self.ended: str | None = None
        # Held by another process: billed only up to the latest proof that it was alive, and a
        # minute starts only at a proven moment (from where the paid time ran out).
        self.remote = False
        self.proven: float | None = None

    def copy(self) -> Rules:
        twin = copy.copy(self)
        twin.warned = set(self.warned)
        return twin

    def feed(self, event) -> Expect:
        c = self.c
        if self.ended:
            return Expect(end=self.ended if isinstance(event, TakenOver) else None)
        if isinstance(event, TakenOver):
            self.on, self.mark = False, None  # lost time is not billed; presence is asked afresh
            self.remote, self.proven = False, None
        t = event.at if self.now is None else max(self.now, event.at)
        self.now = t
        if not (isinstance(event, Observed) and event.moved and event.at >= c.window_start
                and (self.last_report is None or event.at > self.last_report)):
            self._bill(min(t, c.window_end))  # a move: what came since was no proven call
        exp = Expect(t)
        if t >= c.window_end:
            self.ended = exp.end = "time_up" if self.met else "missed"
            return exp
        if isinstance(event, Proven):
            if self.proven is None or event.at > self.proven:
                self.proven = event.at
                self._bill(min(t, c.window_end))
        elif isinstance(event, Live | Paused | Observed):
            fresh = event.at >= c.window_start and (self.last_report is None
                                                    or event.at >= self.last_report)
            if fresh:
                # held by other processes than at the last report (a copy of it moves nothing)
                moved = isinstance(event, Observed) and event.moved and (
                    self.last_report is None or event.at > self.last_report)
                self.last_report = event.at
                both_there, connected = self._presence(event)
                was_remote = self.remote
                self.remote = isinstance(event, Observed) and event.facts.remote
                self.met = self.met or both_there
                if connected and not self.on:
                    self.on, self.mark, self.live_once = True, t, True
                elif connected and (moved or (was_remote and not self.remote)):
                    # held here, or by others, now: what the old holders never proved is
                    # lost, and the new ones prove only from here
                    self.mark = t
                elif not connected:
                    self.on, self.mark = False, None
        elif isinstance(event, DebitOk) and event.minute == self.pending:
            self.paid, self.pending = event.minute, None
            self._bill(min(t, c.window_end))  # what was proven meanwhile fills the new minute
            if event.balance < 2 * c.price and "low_balance" not in self.warned:
                self.warned.add("low_balance")
                exp.warns.append("low_balance")
        elif isinstance(event, DebitRefused) and event.minute == self.pending:
            self.pending, self.ended, exp.end = None, "balance_exhausted", "balance_exhausted"
        elif (isinstance(event, DebitUnknown) and event.minute == self.pending) or (
                isinstance(event, TakenOver) and self.pending is not None):
            exp.debits.append(self.pending)  # the same minute again, same key
        elif isinstance(event, StaffEnded | HungUp | Failed):
            self.ended = exp.end = {StaffEnded: "staff_ended", HungUp: "hung_up",
                                    Failed: "failed"}[type(event)]
        if not self.ended:
            self._decide(exp, t)
        return exp

    def _presence(self, event) -> tuple[bool, bool]:
        """(both parties there, connected), restated: the kiosk decides in direct mode, the
        server in relay mode, the family's own word never; an absent party, never."""
        if isinstance(event, Live | Paused):
            return True, isinstance(event, Live)
        f = event.facts
        there = f.family != "absent" and f.person != "absent"
        if self.c.media == "relay":
            return there, there and f.server
        return there, there and f.person == "connected" and f.sending

    def _bill(self, t: float) -> None:
        if not self.on or t <= self.mark:
            return
        room = self.paid * self.c.minute_s - self.billed
        if self.remote:  # up to the proof; the rest waits at the mark for the next minute
            step = min(room, (self.mark if self.proven is None else min(t, self.proven))
                       - self.mark)
            if step <= 0:
                return
            self.billed += step
            self.mark += step
        else:
            self.billed += min(room, t - self.mark)
            self.mark = t
        if self.paid * self.c.minute_s - self.billed < EPS:
            self.billed = self.paid * self.c.minute_s

    def _decide(self, exp: Expect, t: float) -> None:
        c = self.c
        paid_s = self.paid * c.minute_s
        starts = self.mark if self.remote and self.on else t  # a remote minute: where proven
        proven = not self.remote or not self.on or (self.proven is not None
                                                    and self.proven >= self.mark - EPS)
        if self.on and self.pending is None and self.billed >= paid_s and proven \
                and c.window_end - starts >= c.minute_s - EPS:
            self.pending = self.decided = self.paid + 1
            exp.debits.append(self.pending)
            exp.decided = True
        moments = [c.window_end]
        if self.live_once and "time" not in self.warned:
            if c.window_end - t <= c.warn_s + EPS:
                self.warned.add("time")
                exp.warns.append("time")
            else:
                moments.append(c.window_end - c.warn_s)
        if self.on and self.pending is None and paid_s - self.billed > 0 \
                and self.mark + paid_s - self.billed > t:
            moments.append(self.mark + paid_s - self.billed)  # the mark is t, unless remote
        exp.wake = min(moments)


def compare(c: MeterConfig, exp: Expect, actions: tuple) -> list[str]:
    """What is wrong with the actions of one step, given what the rules expect."""
    wrong = []
    debits = [a for a in actions if isinstance(a, Debit)]
    if [d.minute for d in debits] != exp.debits:
        wrong.append(f"debited minutes {[d.minute for d in debits]}, rules say {exp.debits}")
    for d in debits:
        if d.key != f"visit:{c.visit_id}:minute:{d.minute}" or d.amount != c.price:
            wrong.append(f"debit {d} has the wrong key or amount")
    if exp.decided and debits and not any(isinstance(a, Persist) for a in
                                          actions[:actions.index(debits[0])]):
        wrong.append("a new minute was sent before it was persisted")
    warns = sorted(a.kind for a in actions if isinstance(a, Warn))
    if warns != sorted(exp.warns):
        wrong.append(f"warned {warns}, rules say {sorted(exp.warns)}")
    ends = [a.reason for a in actions if isinstance(a, End)]
    if ends != ([exp.end] if exp.end else []):
        wrong.append(f"ended {ends}, rules say {exp.end}")
    wakes = [a.at for a in actions if isinstance(a, WakeAt)]
    if exp.end or exp.t is None:
        if wakes:
            wrong.append(f"asked to be woken at {wakes} after the end")
    elif len(wakes) != 1 or not exp.t < wakes[0] <= exp.wake + EPS:
        wrong.append(f"asked to be woken at {wakes}; must be in ({exp.t}, {exp.wake}]")
    return wrong


def check_visit(plan, run, rows: list, account: tuple[int, int]) -> list[str]:
    """Every problem with one simulated visit: its steps, its end and its ledger rows.
    `rows` are the family account's visit_minute transfers (key, debit, credit, amount, ref, at
    seconds); `account` is its stored balance and the balance its transfers give."""
    problems, rules = walk(plan, run)
    return (problems + check_ledger(plan, run, rules, rows, account)
            + check_truth(plan, run, rows, account, rules))


def check_money(plan, run, rows: list, account: tuple[int, int]) -> list[str]:
    """The ledger's side alone: what the family paid against what the rules billed."""
    return check_ledger(plan, run, walk(plan, run)[1], rows, account)


def walk(plan, run) -> tuple[list[str], Rules]:
    """The rules fed what the lease holder was fed; each step's actions judged."""
    c = plan.config
    problems = list(run.problems)
    rules, stored, owner, halted = Rules(c), None, 1, False
    for record in run.trace:
        kind, t = record[0], record[1]
        if kind == "step":
            gen, event, actions = record[2:]
            if gen != owner or halted:
                if actions:
                    problems.append(f"t={t}: process {gen} acted without the lease: {actions}")
                continue
            if isinstance(event, LeaseLost):
                halted = True
                if actions:
                    problems.append(f"t={t}: acted after losing the lease: {actions}")
                continue
            problems += [f"t={t}: {event}: {w}" for w in compare(c, rules.feed(event), actions)]
        elif kind == "persisted" and record[2] == owner and not halted:
            stored, state = rules.copy(), record[3]
            if (state["paid_minutes"], state["pending"], state["ended"]) != (
                    rules.paid, rules.pending, rules.ended) or abs(
                    state["connected_s"] - rules.billed) > EPS:
                problems.append(f"t={t}: stored {state}, rules have paid={rules.paid} "
                                f"pending={rules.pending} billed={rules.billed}")
        elif kind == "takeover":
            owner, halted = record[2], False
            rules = stored.copy() if stored is not None else Rules(c)
        elif kind == "crash" and record[2] == owner:
            owner = None
    if run.ended != rules.ended:
        problems.append(f"the visit ended {run.ended}, the rules say {rules.ended}")
    if len(problems) > PROBLEMS_MAX:
        problems[PROBLEMS_MAX:] = [f"... and {len(problems) - PROBLEMS_MAX} more"]
    return problems, rules


def check_ledger(plan, run, rules: Rules, rows: list, account: tuple[int, int]) -> list[str]:
    c, problems = plan.config, []
    minutes = []
    for key, debit, credit, amount, ref, at in rows:
        head, _, minute = key.rpartition(":")
        if head != f"visit:{c.visit_id}:minute" or not minute.isdigit():
            problems.append(f"a visit_minute transfer under a foreign key {key!r}")
            continue
        minutes.append(int(minute))
        if (debit, credit, amount, ref) != (plan.account, SystemAccount.VISIT_REVENUE, c.price,
                                             c.visit_id):
            problems.append(f"minute {minute} moved {amount} from {debit} to {credit} ({ref})")
        if not c.window_start <= at < c.window_end:
            problems.append(f"minute {minute} debited at {at}, outside the window")
    paid = len(minutes)
    if sorted(minutes) != list(range(1, paid + 1)):
        problems.append(f"the ledger holds minutes {sorted(minutes)}: a minute twice or a gap")
    applied = sorted(r[3] for r in run.trace if r[0] == "debit" and r[5] == "ok")
    if applied != sorted(minutes):
        problems.append(f"ledger attempts applied minutes {applied}, rows hold {sorted(minutes)}")
    if not rules.decided - 1 <= paid <= rules.decided:
        problems.append(f"{paid} minutes debited, the rules decided {rules.decided}")
    if paid and not (paid - 1) * c.minute_s - EPS <= rules.billed <= paid * c.minute_s + EPS:
        problems.append(f"{paid} minutes pay for {rules.billed} s of billed connected time")
    if not paid and rules.billed > EPS:
        problems.append(f"{rules.billed} s billed and nothing paid")
    for r in run.trace:
        if r[0] == "debit" and r[5] in ("ok", "insufficient_credits") and (
                (r[6] >= c.price) != (r[5] == "ok")):
            problems.append(f"t={r[1]}: minute {r[3]} was {r[5]} with {r[6]} credits")
    stored, derived = account
    if stored < 0 or stored != derived:
        problems.append(f"the family's balance is {stored}; its transfers give {derived}")
    return problems


def truth_seconds(plan, run) -> tuple[float, float, float | None]:
    """(connected-with-media seconds in the window up to the end, the lags allowed, the end)."""
    c = plan.config
    end = next((r[1] for r in run.trace if r[0] == "ended"), c.window_end)
    end = min(end, c.window_end)
    truth, since, total, allowed = False, None, 0.0, 0.0
    for record in run.trace:
        if record[0] == "allow":
            allowed += record[2]
        elif record[0] == "truth":
            t = min(max(record[1], c.window_start), end)
            if truth and since is not None:
                total += max(0.0, t - since)
            truth, since = record[2], t
    if truth and since is not None:
        total += max(0.0, end - since)
    return total, allowed, end


def check_truth(plan, run, rows: list, account: tuple[int, int],
                rules: Rules | None = None) -> list[str]:
    """The world's side alone: what the family paid against what it really got."""
    c, problems = plan.config, []
    if rules is None:
        _, rules = walk(plan, run)
    paid = len(rows)
    truth_s, allowed_s, _ = truth_seconds(plan, run)
    if rules.billed > truth_s + allowed_s + EPS:
        problems.append(f"billed {rules.billed:.4f} s; connected with media {truth_s:.4f} s "
                        f"(+ {allowed_s:.4f} s of allowed lag)")
    # The meter's own count, as it stored it (a takeover resumes from it).
    counted = max((r[3]["connected_s"] for r in run.trace if r[0] == "persisted"), default=0.0)
    if counted > truth_s + allowed_s + EPS:
        problems.append(f"the meter counted {counted:.4f} s billed; connected with media "
                        f"{truth_s:.4f} s (+ {allowed_s:.4f} s of allowed lag)")
    if paid > 0 and (paid - 1) * c.minute_s > truth_s + allowed_s + EPS:
        problems.append(f"{paid} minutes paid for {truth_s:.4f} s connected with media "
                        f"(+ {allowed_s:.4f} s allowed)")
    clean = (not any(r[0] in ("crash", "lease_lost") for r in run.trace)
             and not plan.enders and run.ended in ("time_up", "missed")
             and not any(plan.faults[f] for f in ("unknown", "late", "midcrash")))
    # Held elsewhere, the seconds since the holders' last renewal seen are not counted when the
    # call stops (in the family's favour): at most a renewal period and the lag, each stop.
    stops = 1 + sum(1 for r in run.trace if r[0] == "truth" and not r[2])
    unproven = stops * (plan.renew_s + plan.proof_lag_s) if plan.remote else 0.0
    if clean and paid * c.minute_s < truth_s - c.minute_s - unproven - EPS:
        problems.append(f"only {paid} minutes paid for {truth_s:.4f} s connected with media: "
                        f"an honest minute went unbilled")
    return problems
