"""The billing simulator in the suite: a thousand faulty visits with a fresh seed every run,
and proof that its checks bite: meters with one rule flipped are caught within a thousand
visits, among them the three that issue 14 fixed (trusting the family's own report; a crashed
process's parties kept present; billing a call held by another process past that process's
last renewal), caught by the world's side alone (sim_check.check_truth: billed seconds
against connected-with-media seconds). Ten thousand visits, and their CPU against a host
calibration, are bench/'s (bench/scenarios/simulator.py).
A failure prints the seed; `python -m tests.support.sim --seed N --only VISIT` replays it."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from billing import meter
from billing.meter import Clock, Debit, Observed, Paused, Proven, TakenOver, WakeAt
from tests.conftest import fresh_sqlite
from tests.support.sim import SimLedger, describe, main, simulate
from tests.support.sim_check import check_money, check_truth
from tests.support.sim_visit import VisitSim, draw_plan


@pytest.fixture
def db_path(sqlite_template: Path, tmp_path: Path) -> Path:
    return Path(fresh_sqlite(sqlite_template, tmp_path).removeprefix("sqlite:///"))


def test_a_thousand_visits_bill_exactly_their_connected_minutes(db_path):
    seed = secrets.randbelow(2**32)
    print(f"simulator seed {seed}")
    started = time.perf_counter()
    result = simulate(seed, 1000, db_path)
    elapsed = time.perf_counter() - started
    assert result.ok, describe(result)
    assert result.visits == 1000
    assert elapsed < 20, f"1000 visits took {elapsed:.1f} s"
    stats = result.stats
    # The faults really happened, and visits ended every way they can.
    assert stats["takeovers"] > 200 and stats["lease_losses"] > 30 and stats["timeouts"] > 50
    for reason in ("time_up", "balance_exhausted", "hung_up", "staff_ended", "missed"):
        assert stats[f"ended {reason}"] > 5, stats
    # Issue 14's faults: crashed holders, stalled kiosks, lying families.
    assert stats["holder_crashes"] > 150 and stats["stalls"] > 200, stats
    assert stats["relay_crashes"] > 50, stats  # the relay's process, in relay mode
    assert stats["remote"] > 600, stats  # calls held by another process than the meter's
    assert stats["family silent"] > 100 and stats["family always"] > 100, stats


def trusts_the_family(monkeypatch):
    """Issue 14's bug 2: the call counts as connected when the FAMILY says so (and the
    person is there), whatever the kiosk or the server sees."""
    monkeypatch.setattr(meter, "PRESENCE_RULE", lambda media, facts: (
        facts.family == "connected" and facts.person != "absent"))
    return meter.step


def keeps_absent_parties_present(monkeypatch):
    """Issue 14's bug 1: a party's presence outlives it (the stored flag that nothing cleared
    when its process died): an absent party is taken as it was last seen."""
    def step(config, state, event):
        if isinstance(event, Observed):
            f, was = event.facts, state.facts
            event = Observed(event.at, replace(
                f, family=was.family if f.family == "absent" else f.family,
                person=was.person if f.person == "absent" else f.person))
        return meter.step(config, state, event)
    return step


def bills_until_the_lease_runs_out(monkeypatch):
    """The gap closed last: a call held by another process counts as connected until that
    process's lease is found run out, not only up to its last renewal (proofs are taken as
    the clock), so a minute that falls due after the holder died is debited."""
    def step(config, state, event):
        if isinstance(event, Proven):
            event = Clock(event.at)
        elif isinstance(event, Observed):
            event = Observed(event.at, replace(event.facts, remote=False))
        return meter.step(config, state, event)
    return step


@pytest.mark.parametrize("broken", [trusts_the_family, keeps_absent_parties_present,
                                    bills_until_the_lease_runs_out])
def test_the_world_alone_exposes_issue_14s_meters(db_path, monkeypatch, broken):
    seed = secrets.randbelow(2**32)
    print(f"simulator seed {seed}")
    result = simulate(seed, 1000, db_path, step=broken(monkeypatch), judge=check_truth)
    assert not result.ok, f"seed {seed}: 1000 visits and the broken meter was not caught"
    print(result.problems)
    assert any("connected with media" in p for p in result.problems)


def bills_paused_time(config, state, event):
    """One rule flipped: a party's disconnection does not stop the meter (a report that the
    call is no longer connected is taken as the clock)."""
    if isinstance(event, Paused) or (isinstance(event, Observed) and state.connected
                                      and not meter.is_connected(config.media, event.facts)):
        event = Clock(event.at)
    return meter.step(config, state, event)


def forgets_paid_minutes_on_takeover():
    """One rule flipped: a process taking a visit over counts minutes from zero instead of from
    the stored count, and keys its debits by process so that the ledger's idempotency cannot
    hide the second charge."""
    takeovers: Counter = Counter()

    def step(config, state, event):
        if isinstance(event, TakenOver) and state.ended is None:
            takeovers[config.visit_id] += 1
            state = replace(state, paid_minutes=0, connected_s=0.0, pending=None)
        new, actions = meter.step(config, state, event)
        if n := takeovers[config.visit_id]:
            actions = [replace(a, key=f"{a.key}:process:{n}") if isinstance(a, Debit) else a
                       for a in actions]
        return new, actions
    return step


def sleeps_through_the_paid_time(config, state, event):
    """One rule flipped: the meter asks to be woken only for the window's end, so connected
    time past the paid time would go unbilled."""
    new, actions = meter.step(config, state, event)
    return new, [WakeAt(config.window_end) if isinstance(a, WakeAt) else a for a in actions]


@pytest.mark.parametrize("broken", [bills_paused_time, forgets_paid_minutes_on_takeover(),
                                    sleeps_through_the_paid_time],
                         ids=["bills_paused_time", "forgets_paid_minutes_on_takeover",
                              "sleeps_through_the_paid_time"])
def test_a_broken_meter_is_caught_within_a_thousand_visits(db_path, broken):
    seed = secrets.randbelow(2**32)
    print(f"simulator seed {seed}")
    result = simulate(seed, 1000, db_path, step=broken)
    assert not result.ok, f"seed {seed}: 1000 visits and the broken meter was not caught"
    report = describe(result)
    print(report.splitlines()[:5])
    assert f"seed {seed}" in report and "trace:" in report and "--only" in report


@pytest.mark.parametrize("broken", [bills_paused_time, forgets_paid_minutes_on_takeover()],
                         ids=["bills_paused_time", "forgets_paid_minutes_on_takeover"])
def test_the_money_alone_exposes_a_broken_meter(db_path, broken):
    """Without the step-by-step comparison, the ledger rows against the billed connected time
    still catch the flipped rule."""
    seed = secrets.randbelow(2**32)
    print(f"simulator seed {seed}")
    result = simulate(seed, 1000, db_path, step=broken, judge=check_money)
    assert not result.ok, f"seed {seed}: the money looked right for 1000 visits"
    print(result.problems)


def test_a_minute_whose_proof_never_comes_still_ends_at_the_window(db_path):
    """Found by bench/'s 10,000-visit run (seed 4242, visit 7542): a party's holder died and the
    party was back on another process before anyone noticed, so no pass re-read who holds it and
    the proof of the next minute never came; the meter's timer, skipped for want of that proof,
    was skipped again every lease, past the window's end: the visit never ended ("runaway").
    The shell now skips a timer at most once per due point (signalling/meters.py)."""
    result = simulate(4242, 1, db_path, only=7542)
    assert result.ok, describe(result)


def forgets_who_holds_the_party(config, state, event):
    """One rule dropped: the meter is not told when a party comes back on another process
    (meter.Observed.moved), so the new process's proofs carry the time on across the gap."""
    if isinstance(event, Observed):
        event = replace(event, moved=False)
    return meter.step(config, state, event)


def test_a_holder_dying_and_the_party_back_elsewhere_bills_no_gap(db_path, tmp_path):
    """Found by the suite's fresh seed in CI (seed 3220298586, visit 486): the family's process
    died (102.78 on the virtual clock), and its death, noticed at 103.53, was reported late
    (1.31 s: after the family was back on another process at 104.55, so it was stale). The
    facts then read as before (both connected, held elsewhere), and the new process's renewals
    (104.22, 104.5) carried the connected time on from the dead one's last (102.77): billed
    6.44 s against 5.00 s connected with media. The shell now tells the meter when a party is
    held by another process than at its last pass (signalling/meters.py, `moved`), and the
    meter counts from there. The same visit with the move ignored is billed the gap again."""
    again = tmp_path / "again.db"  # a fresh ledger for the second run
    again.write_bytes(db_path.read_bytes())
    result = simulate(3220298586, 1, db_path, only=486)
    assert result.ok, describe(result)
    broken = simulate(3220298586, 1, again, only=486, step=forgets_who_holds_the_party)
    assert not broken.ok and any("connected with media" in p for p in broken.problems)


def test_a_party_back_elsewhere_keeps_what_its_dead_holder_proved(db_path):
    """Found by a sweep of seeds (seed 1078, visit 299), against the move's first version,
    which dropped the old holders' proof on every move: the person's process died 0.11 s
    before the person was back on another, and the 1.9 s its dead process had proven since the
    last pass went unbilled (3 minutes for 40.8 s connected, at 10 s a minute). A party that
    left its process only by that process's death, the facts unchanged, keeps it."""
    result = simulate(1078, 1, db_path, only=299)
    assert result.ok, describe(result)


def test_a_minute_proven_while_the_last_debit_was_pending_is_debited_in_the_window(db_path):
    """Found by a sweep of seeds (seed 121, visit 514): minute 3's debit was confirmed 92 s
    late; the time proven meanwhile was counted only at the next event, the window's end, and
    minute 4 was debited then, outside the window. The DebitOk now counts it (meter.py)."""
    result = simulate(121, 1, db_path, only=514)
    assert result.ok, describe(result)


def test_the_same_seed_replays_exactly(sqlite_template, tmp_path):
    seed = secrets.randbelow(2**32)
    traces = []
    for copy in ("a", "b"):
        (tmp_path / copy).mkdir()
        store = SimLedger(Path(fresh_sqlite(sqlite_template, tmp_path / copy)
                               .removeprefix("sqlite:///")))
        try:
            runs = []
            for index in range(30):
                plan = draw_plan(seed, index)
                store.open(plan)
                runs.append(VisitSim(plan, store, meter.step).go().trace)
            traces.append(runs)
        finally:
            store.close()
    assert traces[0] == traces[1]
    assert any(record[0] == "debit" for run in traces[0] for record in run)


def test_the_command_line_prints_the_seed_and_the_verdict(capsys):
    assert main(["--seed", "7", "--visits", "25"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("seed 7\n") and "ok: seed 7, 25 visits" in out
    assert main(["--seed", "7", "--only", "3"]) == 0
    assert "trace:" in capsys.readouterr().out
