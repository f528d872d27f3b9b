"""The visit meter's rules, one at a time, on the pure state machine (billing/meter.py).

A tiny in-memory shell performs the actions: debits against a balance with idempotent keys,
outcomes at once, clocks exactly when the meter asks. tests/integration/test_meter_sim.py drives
the same
machine against the real ledger under faults.
"""

from __future__ import annotations

import json
import math

import pytest

from billing.meter import (
    NOT_CONNECTED,
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
    Observed,
    Paused,
    Persist,
    StaffEnded,
    TakenOver,
    Tick,
    WakeAt,
    Warn,
    minute_key,
    step,
)

MINUTE = 60.0


def config(window_end: float = 1800.0, window_start: float = 0.0, price: int = 50) -> MeterConfig:
    return MeterConfig("v1", price, MINUTE, window_start, window_end)


class Shell:
    """Performs the meter's actions the way a perfect shell would."""

    def __init__(self, cfg: MeterConfig, balance: int, state: MeterState | None = None) -> None:
        self.cfg, self.balance = cfg, balance
        self.state = state or MeterState()
        self.charged: dict[str, int] = {}  # key -> minute: the ledger's idempotency
        self.log: list[tuple[float, object]] = []
        self.stored: str | None = None
        self.wake: float | None = None
        self.hold_outcomes = False  # leave debits in flight (the caller answers them)
        self.in_flight: list[Debit] = []

    def feed(self, event) -> list:
        self.state, actions = step(self.cfg, self.state, event)
        now = self.state.now if self.state.now is not None else event.at
        outcomes = []
        for action in actions:
            self.log.append((now, action))
            if isinstance(action, Persist):
                self.stored = json.dumps(action.state.to_dict())
            elif isinstance(action, WakeAt):
                self.wake = action.at
            elif isinstance(action, End):
                self.wake = None
            elif isinstance(action, Debit):
                if self.hold_outcomes:
                    self.in_flight.append(action)
                else:
                    outcomes.append(self.debit(action, now))
        for outcome in outcomes:
            self.feed(outcome)
        return actions

    def debit(self, action: Debit, now: float):
        if action.key not in self.charged:
            if self.balance < action.amount:
                return DebitRefused(now, action.minute)
            self.balance -= action.amount
            self.charged[action.key] = action.minute
        return DebitOk(now, action.minute, self.balance)

    def run_until(self, t: float) -> None:
        while self.wake is not None and self.wake <= t:
            self.feed(Clock(self.wake))

    def of(self, kind: type) -> list[tuple[float, object]]:
        return [(t, a) for t, a in self.log if isinstance(a, kind)]

    def debits(self) -> list[tuple[float, int]]:
        return [(t, a.minute) for t, a in self.of(Debit)]

    def ended(self) -> tuple[float, str] | None:
        ends = self.of(End)
        return (ends[-1][0], ends[-1][1].reason) if ends else None


def test_120_credits_at_50_a_minute_buy_exactly_two_minutes():
    shell = Shell(config(), 120)
    shell.feed(Live(0.0))
    shell.run_until(1800.0)
    assert sorted(shell.charged.values()) == [1, 2]
    assert shell.balance == 20
    assert shell.ended() == (120.0, "balance_exhausted")
    assert shell.state.connected_s == 2 * MINUTE == shell.state.paid_minutes * MINUTE
    assert [a.kind for _, a in shell.of(Warn)] == ["low_balance"]  # 70 left covers one minute
    assert shell.of(Warn)[0][0] == 0.0


def test_keys_are_one_per_visit_and_minute():
    assert minute_key("v1", 3) == "visit:v1:minute:3"
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(200.0)
    assert [a.key for _, a in shell.of(Debit)] == [minute_key("v1", k) for k in (1, 2, 3, 4)]
    assert {a.amount for _, a in shell.of(Debit)} == {50}


@pytest.mark.parametrize(("pause_at", "resume_at"),
                         [(150.0, 1050.0), (95.5, 900.25), (60.0, 960.0)])
def test_a_pause_of_half_the_window_is_not_billed(pause_at, resume_at):
    window = 1800.0
    shell = Shell(config(window), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(pause_at)
    shell.feed(Paused(pause_at))
    shell.run_until(resume_at)
    shell.feed(Live(resume_at))
    shell.run_until(1499.0)
    shell.feed(HungUp(1499.0))
    connected = pause_at + (1499.0 - resume_at)
    assert shell.state.connected_s == connected
    assert len(shell.charged) == math.ceil(connected / MINUTE)
    assert 10_000 - shell.balance == 50 * math.ceil(connected / MINUTE)
    assert shell.ended() == (1499.0, "hung_up")


def test_the_next_minute_is_debited_the_instant_the_paid_time_is_used():
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(120.0)
    shell.feed(HungUp(120.0))
    assert shell.debits() == [(0.0, 1), (60.0, 2), (120.0, 3)]


def test_unused_paid_seconds_carry_over_a_pause():
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(10.0)
    shell.feed(Paused(10.0))
    shell.run_until(100.0)
    assert shell.debits() == [(0.0, 1)]
    shell.feed(Live(100.0))
    assert shell.wake == 150.0  # 50 paid seconds were left
    shell.run_until(200.0)
    assert shell.debits() == [(0.0, 1), (150.0, 2)]


def test_no_debit_while_paused_even_at_the_paid_time():
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(60.0)  # minute 2 debited at 60
    shell.feed(Paused(60.0))
    shell.run_until(1000.0)
    assert shell.debits() == [(0.0, 1), (60.0, 2)]
    assert shell.state.connected_s == 60.0


def test_no_minute_in_the_last_partial_minute_and_the_visit_runs_to_the_end():
    shell = Shell(config(window_end=200.0), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(1000.0)
    assert shell.debits() == [(0.0, 1), (60.0, 2), (120.0, 3)]  # at 180 only 20 s remain
    assert shell.ended() == (200.0, "time_up")


def test_a_minute_is_debited_when_exactly_a_minute_remains():
    shell = Shell(config(window_end=180.0), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(1000.0)
    assert shell.debits() == [(0.0, 1), (60.0, 2), (120.0, 3)]
    assert shell.ended() == (180.0, "time_up")


def test_joining_in_the_last_partial_minute_costs_nothing():
    shell = Shell(config(window_end=200.0), 10_000)
    shell.feed(Live(150.0))
    shell.run_until(1000.0)
    assert shell.charged == {}
    assert shell.ended() == (200.0, "time_up")
    assert [a.kind for _, a in shell.of(Warn)] == ["time"]


def test_the_window_end_ends_the_visit_and_nothing_happens_after():
    shell = Shell(config(window_end=300.0), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(10_000.0)
    assert shell.ended() == (300.0, "time_up")
    final = shell.state
    for event in (Live(400.0), Clock(500.0), DebitOk(500.0, 9, 0), StaffEnded(600.0)):
        assert step(shell.cfg, final, event) == (final, [])


def test_a_late_event_ends_the_visit_time_up_at_the_window_end():
    shell = Shell(config(window_end=300.0), 10_000)
    shell.feed(Live(0.0))
    shell.wake = None  # a shell that overslept
    shell.feed(StaffEnded(420.0))
    assert shell.ended() == (420.0, "time_up")
    assert shell.state.connected_s == 60.0  # capped at the paid time: nothing beyond it


@pytest.mark.parametrize(("event", "reason"), [
    (StaffEnded(30.0), "staff_ended"), (HungUp(30.0), "hung_up"), (Failed(30.0), "failed")])
def test_enders_end_at_once(event, reason):
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    actions = shell.feed(event)
    assert shell.ended() == (30.0, reason)
    assert isinstance(actions[0], Persist) and actions[0].state.ended == reason
    assert not any(isinstance(a, WakeAt) for a in actions)


def test_a_pending_debit_holds_connected_time_at_the_paid_time():
    shell = Shell(config(), 10_000)
    shell.hold_outcomes = True
    shell.feed(Live(0.0))
    assert shell.state.pending == 1
    shell.feed(Clock(5.0))
    assert shell.state.connected_s == 0.0
    shell.feed(DebitOk(7.0, 1, 9_950))
    assert shell.wake == 67.0  # the minute starts when it is paid
    shell.run_until(67.0)
    assert shell.state.pending == 2 and shell.state.connected_s == 60.0


def test_an_unknown_outcome_is_retried_with_the_same_key():
    shell = Shell(config(), 10_000)
    shell.hold_outcomes = True
    shell.feed(Live(0.0))
    first = shell.in_flight.pop()
    actions = shell.feed(DebitUnknown(3.0, 1))
    assert [a for a in actions if isinstance(a, Debit)] == [first]
    assert shell.state.pending == 1
    assert step(shell.cfg, shell.state, DebitUnknown(4.0, 7))[1][-1] == WakeAt(shell.wake)


def test_duplicate_and_late_outcomes_are_ignored():
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(60.0)
    paid = shell.state.paid_minutes
    for late in (DebitOk(61.0, 1, 5), DebitRefused(61.0, 1), DebitUnknown(61.0, 2)):
        _, actions = step(shell.cfg, shell.state, late)
        assert not any(isinstance(a, Debit | End) for a in actions)
    assert shell.state.paid_minutes == paid


def test_stale_presence_reports_are_dropped_and_late_ones_never_rewrite_time():
    shell = Shell(config(), 10_000)
    shell.feed(Live(20.0))
    shell.feed(Paused(10.0))  # older than the report applied: stale
    assert shell.state.connected
    shell.feed(Clock(50.0))
    shell.feed(Paused(40.0))  # newer report, late: applies from the meter's now
    assert not shell.state.connected and shell.state.connected_s == 30.0


def test_a_late_stop_takes_back_the_frozen_seconds():
    """The kiosk saw the family's last frame at 40 and says so at 42 (issue 21): the two frozen
    seconds are not a call. Without `stopped_at` the same late report bills them."""
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(42.0)
    shell.feed(Observed(42.0, NOT_CONNECTED, stopped_at=40.0))
    assert not shell.state.connected and shell.state.connected_s == pytest.approx(40.0)
    assert shell.state.paid_minutes == 1


def test_a_minute_debited_inside_the_frozen_seconds_carries_over():
    """Minute 2 fell due at 60, inside a freeze that began at 59 and was reported at 61: it
    stays paid (the debit is done) but its seconds are all still to be used, and billing
    after the resume at 100 reaches minute 3 only when 61 more connected seconds have passed."""
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    shell.run_until(61.0)
    assert shell.state.paid_minutes == 2
    shell.feed(Observed(61.0, NOT_CONNECTED, stopped_at=59.0))
    assert shell.state.connected_s == pytest.approx(59.0)
    shell.feed(Live(100.0))
    shell.run_until(300.0)
    assert [t for t, _ in shell.debits()] == [0.0, 60.0, pytest.approx(161.0),
                                              pytest.approx(221.0), pytest.approx(281.0)]


def test_a_late_stop_reaches_back_no_further_than_the_stretch():
    """A stop claiming a moment before the call resumed takes back only this stretch's time:
    the pause before it was already unbilled, and earlier stretches are settled."""
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    shell.feed(Paused(10.0))
    shell.feed(Live(20.0))
    shell.run_until(25.0)
    shell.feed(Observed(25.0, NOT_CONNECTED, stopped_at=5.0))
    assert shell.state.connected_s == pytest.approx(10.0)


def test_reports_before_the_window_opens_are_ignored():
    shell = Shell(config(window_start=100.0, window_end=700.0), 10_000)
    shell.feed(Live(50.0))
    assert not shell.state.connected and shell.charged == {}
    shell.feed(Live(100.0))
    assert shell.debits() == [(100.0, 1)]


def test_warnings_come_once_each():
    shell = Shell(config(window_end=600.0), 170)  # 120 after minute 1, 70 after minute 2
    shell.feed(Live(0.0))
    shell.run_until(100.0)
    shell.feed(Paused(100.0))
    shell.run_until(600.0)
    warnings = [(t, a.kind) for t, a in shell.of(Warn)]
    assert warnings == [(60.0, "low_balance"), (480.0, "time")]  # time warning while paused


def test_ticks_carry_the_paid_minutes_and_the_balance():
    shell = Shell(config(window_end=600.0), 1_000)
    shell.feed(Live(0.0))
    shell.run_until(61.0)
    ticks = [a for _, a in shell.of(Tick)]
    assert ticks[-1] == Tick(2, 540.0, 900)


def test_state_round_trips_through_json():
    shell = Shell(config(), 120)
    shell.feed(Live(0.0))
    shell.run_until(30.0)
    restored = MeterState.from_dict(json.loads(json.dumps(shell.state.to_dict())))
    assert restored == shell.state


def test_takeover_bills_no_lost_time_and_no_minute_twice():
    cfg = config()
    first = Shell(cfg, 10_000)
    first.feed(Live(0.0))
    first.run_until(90.0)
    first.feed(Clock(90.0))  # last accounting: 90 s connected, 2 minutes paid
    stored = first.stored
    # The process dies; another takes over at 130 from what was stored.
    second = Shell(cfg, first.balance, MeterState.from_dict(json.loads(stored)))
    second.charged = dict(first.charged)
    actions = second.feed(TakenOver(130.0))
    assert not any(isinstance(a, Debit) for a in actions)
    assert not second.state.connected
    second.feed(Live(130.0))
    assert second.wake == 160.0  # 30 paid seconds left; 90..130 was never billed
    second.run_until(200.0)
    assert second.debits() == [(160.0, 3)]
    assert sorted(second.charged.values()) == [1, 2, 3]


def test_takeover_settles_a_pending_debit_with_its_key():
    cfg = config()
    first = Shell(cfg, 10_000)
    first.hold_outcomes = True
    first.feed(Live(0.0))
    applied = first.in_flight.pop()
    first.debit(applied, 0.0)  # it reached the ledger; the process died before hearing back
    second = Shell(cfg, first.balance, MeterState.from_dict(json.loads(first.stored)))
    second.charged = dict(first.charged)
    second.feed(TakenOver(20.0))
    assert second.debits() == [(20.0, 1)]
    assert second.state.paid_minutes == 1 and second.balance == 9_950  # charged once


def test_after_a_takeover_the_current_presence_applies_from_the_takeover_on():
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    shell.feed(Paused(20.0))
    shell.feed(TakenOver(30.0))
    shell.feed(Live(10.0))  # older than the last report applied: stale
    assert not shell.state.connected
    shell.feed(Live(25.0))  # connected since 25, as the visit row says: billed from 30
    assert shell.state.connected and shell.state.since == 30.0
    assert shell.wake == 70.0  # 40 paid seconds were left after 20 s of the first minute


def test_after_the_lease_is_lost_the_process_does_nothing():
    shell = Shell(config(), 10_000)
    shell.feed(Live(0.0))
    assert shell.feed(LeaseLost(10.0)) == []
    for event in (Clock(60.0), Paused(61.0), DebitOk(62.0, 1, 0), StaffEnded(63.0)):
        assert shell.feed(event) == []
    actions = shell.feed(TakenOver(70.0))
    assert isinstance(actions[0], Persist) and not shell.state.halted


def test_a_takeover_of_an_ended_visit_announces_the_end_again():
    ended = MeterState(ended="staff_ended", now=5.0)
    assert step(config(), ended, TakenOver(9.0)) == (ended, [End("staff_ended")])


def test_a_zero_balance_ends_the_visit_when_it_goes_live():
    shell = Shell(config(), 49)
    shell.feed(Live(12.0))
    assert shell.ended() == (12.0, "balance_exhausted")
    assert shell.charged == {} and shell.state.connected_s == 0.0


@pytest.mark.parametrize("kwargs", [dict(price=0), dict(price=1.5), dict(minute_s=0.0),
                                    dict(window_end=0.0)])
def test_config_is_checked(kwargs):
    base = dict(visit_id="v", price=50, minute_s=60.0, window_start=0.0, window_end=600.0)
    with pytest.raises(ValueError):
        MeterConfig(**{**base, **kwargs})
