"""The visit meter: DESIGN.md's per-minute billing rules as a pure, deterministic state machine.

`step(config, state, event) -> (state, actions)` is all of it: no clock, no randomness, no I/O.
Times are floats in seconds on the caller's timeline. The async shell around it feeds events,
performs the returned actions in order and stores the state; tests/sim.py drives it against
the real ledger under injected faults.

Billing
- Prepaid by the connected minute. Connected time counts only while the meter knows both
  parties are connected (from `Live` until `Paused`), and never beyond the paid time
  (`paid_minutes * minute_s`).
- When connected time has reached the paid time (at once when the visit goes live, then after
  each `minute_s` of connected time) minute k = paid_minutes + 1 is debited, under the key
  `visit:{visit_id}:minute:{k}`. While that debit is pending, connected time stays at the paid
  time: the new minute starts when `DebitOk` arrives, so the family never pays for the ledger's
  latency. Unused paid seconds carry over a pause.
- `DebitRefused` ends the visit `balance_exhausted`, at the moment the unpaid minute would
  have started. `DebitUnknown` (a timeout) issues the same `Debit` again, same key.
- No minute is debited when less than `minute_s` of the window remains at the moment it would
  start (within a microsecond): the visit runs unbilled to the window's end.
- Any event at or after `window_end` ends the visit `time_up` before the event is considered.
  `StaffEnded`, `HungUp` and `Failed` (the shell gives up) end it at once. After the end nothing
  happens.
- Warnings, each at most once per visit: `low_balance` after a successful debit that leaves
  `balance // price <= 1` (the balance covers one more minute or less); `time` at the first step
  at which the visit has gone live (it may be paused since) and at most
  `warn_before_end_minutes * minute_s` of the window remains.

Time
- An event is applied at max(event.at, the latest time the meter has seen): the meter's time
  never runs backwards and accounted time is never rewritten. A presence report (`Live`,
  `Paused`) stamped before the latest one applied is stale and dropped; a report stamped before
  `window_start` is ignored (the visit opens at the window's start).
- Every step that leaves the visit running ends with `WakeAt(t)`: the shell must feed
  `Clock(t)` then (an earlier event is fine; extra clocks are harmless).

Persistence and failover
- `Persist(state)` is the first action of every step that changed the state, so that, for
  instance, a debit is on record as pending before it is sent.
- `LeaseLost`: this process must stop. The state stays as last stored, nothing is persisted,
  and every later event is ignored until `TakenOver`.
- `TakenOver(at)`: a new process resumes from the stored state. The parties are not assumed
  connected until the shell reports their current presence (a `Live` stamped with the moment
  they connected, before the takeover, is fine: it applies from the takeover on), so the time
  between the stored state's last accounting and the takeover is never billed. A pending debit
  is issued again with its key, which settles it whether or not the old process's attempt
  reached the ledger. An ended state is announced again (`End`): the old process may have
  stored the end and died before announcing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

EPSILON_S = 1e-6
END_REASONS = ("time_up", "balance_exhausted", "hung_up", "staff_ended", "failed")


def minute_key(visit_id: str, minute: int) -> str:
    """The idempotency key of a minute's debit: one charge per (visit, minute), ever."""
    return f"visit:{visit_id}:minute:{minute}"


@dataclass(frozen=True, slots=True)
class MeterConfig:
    visit_id: str
    price: int  # credits per minute
    minute_s: float  # length of a billed minute: 60 in production, shorter in tests
    window_start: float
    window_end: float
    warn_before_end_minutes: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.price, int) or self.price <= 0:
            raise ValueError("price must be a positive whole number of credits")
        if self.minute_s <= 0 or self.window_end <= self.window_start:
            raise ValueError("minute_s must be positive and the window must not be empty")

    @property
    def warn_s(self) -> float:
        return self.warn_before_end_minutes * self.minute_s


@dataclass(frozen=True, slots=True)
class MeterState:
    """Everything a process needs to carry on a visit's meter; JSON-serialisable."""

    paid_minutes: int = 0
    connected_s: float = 0.0  # connected time accounted so far; <= paid_minutes * minute_s
    connected: bool = False  # both parties connected, as last reported
    since: float | None = None  # connected time is accounted up to here (None: not connected)
    pending: int | None = None  # the minute whose debit awaits an outcome
    balance: int | None = None  # the balance after the last successful debit
    warned: tuple[str, ...] = ()
    went_live: bool = False
    now: float | None = None  # the latest time seen
    presence_at: float | None = None  # stamp of the latest presence report applied
    halted: bool = False  # the lease is lost: this process must not act
    ended: str | None = None  # one of END_REASONS

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__slots__}
        data["warned"] = list(self.warned)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeterState:
        return cls(**{**data, "warned": tuple(data["warned"])})


# --- events: each carries `at`, the time it happened on the caller's timeline ------------

@dataclass(frozen=True, slots=True)
class Live:  # both parties are connected: the visit goes live, or resumes
    at: float


@dataclass(frozen=True, slots=True)
class Paused:  # a party disconnected
    at: float


@dataclass(frozen=True, slots=True)
class Clock:  # time passed (the shell's answer to WakeAt)
    at: float


@dataclass(frozen=True, slots=True)
class DebitOk:
    at: float
    minute: int
    balance: int  # the family's balance after the debit


@dataclass(frozen=True, slots=True)
class DebitRefused:  # insufficient credits
    at: float
    minute: int


@dataclass(frozen=True, slots=True)
class DebitUnknown:  # a timeout: the debit may or may not have been applied
    at: float
    minute: int


@dataclass(frozen=True, slots=True)
class StaffEnded:
    at: float


@dataclass(frozen=True, slots=True)
class HungUp:  # a party left the visit for good
    at: float


@dataclass(frozen=True, slots=True)
class Failed:  # the shell gives up (say, the ledger stayed unreachable)
    at: float


@dataclass(frozen=True, slots=True)
class LeaseLost:
    at: float


@dataclass(frozen=True, slots=True)
class TakenOver:  # this process resumes the visit from the stored state
    at: float


Event = (Live | Paused | Clock | DebitOk | DebitRefused | DebitUnknown | StaffEnded | HungUp
         | Failed | LeaseLost | TakenOver)


# --- actions -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Debit:
    minute: int
    key: str
    amount: int


@dataclass(frozen=True, slots=True)
class Warn:
    kind: str  # "low_balance" | "time"


@dataclass(frozen=True, slots=True)
class Tick:
    paid_minutes: int
    seconds_left: float  # until the window ends
    balance: int | None


@dataclass(frozen=True, slots=True)
class End:
    reason: str


@dataclass(frozen=True, slots=True)
class Persist:
    state: MeterState


@dataclass(frozen=True, slots=True)
class WakeAt:
    at: float


Action = Debit | Warn | Tick | End | Persist | WakeAt
Result = tuple[MeterState, list[Action]]
_ORDER = {Debit: 0, Warn: 1, Tick: 2, End: 3}  # and Persist first, WakeAt last


# --- the machine -------------------------------------------------------------------------

def step(config: MeterConfig, state: MeterState, event: Event) -> Result:
    if state.ended is not None:
        return state, [End(state.ended)] if isinstance(event, TakenOver) else []
    if isinstance(event, TakenOver):
        state = replace(state, connected=False, since=None, halted=False)
    elif state.halted:
        return state, []
    elif isinstance(event, LeaseLost):
        return replace(state, halted=True), []
    t = event.at if state.now is None else max(event.at, state.now)
    s = replace(_account(config, state, min(t, config.window_end)), now=t)
    if t >= config.window_end:
        s, effects = replace(s, ended="time_up"), [End("time_up")]
    else:
        s, effects = HANDLERS[type(event)](config, s, event, t)
    if s.ended is None:
        s, more = _next_minute(config, s, t)
        effects += more
        s, more = _time_warning(config, s, t)
        effects += more
    effects.sort(key=lambda action: _ORDER[type(action)])
    actions: list[Action] = [Persist(s)] if s != state else []
    actions += effects
    if s.ended is None:
        actions.append(WakeAt(_next_wake(config, s, t)))
    return s, actions


def _account(config: MeterConfig, s: MeterState, t: float) -> MeterState:
    """Count connected time up to t, never past the paid time."""
    if not s.connected or s.since is None or t <= s.since:
        return s
    paid_s = s.paid_minutes * config.minute_s
    connected_s = min(paid_s, s.connected_s + (t - s.since))
    if paid_s - connected_s < EPSILON_S:
        connected_s = paid_s
    return replace(s, connected_s=connected_s, since=t)


def _next_minute(config: MeterConfig, s: MeterState, t: float) -> Result:
    if not s.connected or s.pending is not None:
        return s, []
    if s.connected_s < s.paid_minutes * config.minute_s:
        return s, []
    if config.window_end - t < config.minute_s - EPSILON_S:
        return s, []  # the last partial minute of the window is not billed
    minute = s.paid_minutes + 1
    return replace(s, pending=minute), [_debit(config, minute)]


def _time_warning(config: MeterConfig, s: MeterState, t: float) -> Result:
    if not s.went_live or "time" in s.warned or config.window_end - t > config.warn_s + EPSILON_S:
        return s, []
    return replace(s, warned=(*s.warned, "time")), [Warn("time")]


def _next_wake(config: MeterConfig, s: MeterState, t: float) -> float:
    wakes = [config.window_end]
    if s.went_live and "time" not in s.warned:
        wakes.append(config.window_end - config.warn_s)
    if s.connected and s.pending is None:
        left_s = s.paid_minutes * config.minute_s - s.connected_s
        if left_s > 0:
            wakes.append(t + left_s)
    return min(wake for wake in wakes if wake > t)


def _debit(config: MeterConfig, minute: int) -> Debit:
    return Debit(minute, minute_key(config.visit_id, minute), config.price)


def _tick(config: MeterConfig, s: MeterState, t: float) -> Tick:
    return Tick(s.paid_minutes, max(0.0, config.window_end - t), s.balance)


def _stale(s: MeterState, at: float) -> bool:
    return s.presence_at is not None and at < s.presence_at



def _on_live(config: MeterConfig, s: MeterState, event: Live, t: float) -> Result:
    if event.at < config.window_start or _stale(s, event.at):
        return s, []
    s = replace(s, presence_at=event.at)
    if s.connected:
        return s, []
    s = replace(s, connected=True, since=t, went_live=True)
    return s, [_tick(config, s, t)]


def _on_paused(config: MeterConfig, s: MeterState, event: Paused, t: float) -> Result:
    if event.at < config.window_start or _stale(s, event.at):
        return s, []
    return replace(s, presence_at=event.at, connected=False, since=None), []


def _on_clock(config: MeterConfig, s: MeterState, event: Clock, t: float) -> Result:
    return s, []


def _on_debit_ok(config: MeterConfig, s: MeterState, event: DebitOk, t: float) -> Result:
    if s.pending != event.minute:
        return s, []  # a duplicate or a late outcome: this minute is settled
    s = replace(s, paid_minutes=event.minute, pending=None, balance=event.balance)
    effects: list[Action] = [_tick(config, s, t)]
    if event.balance // config.price <= 1 and "low_balance" not in s.warned:
        s = replace(s, warned=(*s.warned, "low_balance"))
        effects.append(Warn("low_balance"))
    return s, effects


def _on_debit_refused(config: MeterConfig, s: MeterState, event: DebitRefused, t: float) -> Result:
    if s.pending != event.minute:
        return s, []
    return replace(s, pending=None, ended="balance_exhausted"), [End("balance_exhausted")]


def _on_debit_unknown(config: MeterConfig, s: MeterState, event: DebitUnknown, t: float) -> Result:
    if s.pending != event.minute:
        return s, []
    return s, [_debit(config, event.minute)]


def _on_taken_over(config: MeterConfig, s: MeterState, event: TakenOver, t: float) -> Result:
    return s, [_debit(config, s.pending)] if s.pending is not None else []


def _ender(reason: str) -> Callable[..., Result]:
    def end(config: MeterConfig, s: MeterState, event: Event, t: float) -> Result:
        return replace(s, ended=reason), [End(reason)]
    return end


HANDLERS: dict[type, Callable[..., Result]] = {
    Live: _on_live,
    Paused: _on_paused,
    Clock: _on_clock,
    DebitOk: _on_debit_ok,
    DebitRefused: _on_debit_refused,
    DebitUnknown: _on_debit_unknown,
    TakenOver: _on_taken_over,
    StaffEnded: _ender("staff_ended"),
    HungUp: _ender("hung_up"),
    Failed: _ender("failed"),
}
