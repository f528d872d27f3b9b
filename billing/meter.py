"""The visit meter: DESIGN.md's per-minute billing rules as a pure, deterministic state machine.

`step(config, state, event) -> (state, actions)` is all of it: no clock, no randomness, no I/O.
Times are floats in seconds on the caller's timeline. The async shell around it feeds events,
performs the returned actions in order and stores the state; tests/support/sim.py drives it against
the real ledger under injected faults.

Presence: who may say the call is connected (the trust model, docs/visits.md)
- The shell reports what it knows as `Observed(at, facts)`: each party present or not (its
  socket joined, and the process holding that socket alive: a crashed holder's party is
  absent), what the person's side (the facility's kiosk) reports, and in relay mode what the
  server itself sees. The meter decides from them (`is_connected`), never the shell:
  - a party that is absent makes the call not connected, whatever anyone says;
  - direct mode: the kiosk is the authority. Connected while it reports an ICE-connected peer
    connection with media arriving from the family AND its own outbound media advancing
    (`sending`; a stall past the threshold makes it False). The family's own report is
    advisory and changes nothing;
  - relay mode: the server's own observation (media arriving from both parties, the person's
    advancing) is the only one; both clients' reports change nothing.
- `Live(at)` and `Paused(at)` are shorthands for the call as a whole: `Live` is every fact
  saying connected, `Paused` both parties present and the call not connected.
- Held elsewhere (`Facts.remote`): when a party's socket, or in relay mode the server's
  observation, is held by another process than the meter's, that process is known to be alive
  only up to its last liveness renewal, which the shell reports as `Proven(at)` (every such
  process was alive at `at`). Its death is found only when its lease runs out (seconds later):
  so connected time counts only up to the latest proof, and a minute starts only at a moment
  proven (see Billing). A call held by the meter's own process needs no proof: the meter
  runs only while its process lives.
- A proof speaks only for the processes that held the parties when it was taken. When a
  party's socket moves to a process that did not hold it before (its process died or drained
  and the client reconnected elsewhere), the facts may read the same as before, but the new
  process's renewals prove nothing about the time before the party came to it: the shell says
  so with `Observed(..., moved=True)`, and connected time counts again only from that report
  (as when the call comes to be held by the meter's own process). Without it, a family whose
  process died and who came back on another before a pass noticed was billed the gap. The
  same holds when the call stopped and came back between two reports with the same facts (a
  party dropped and rejoined on the same process, which renewed all along): `moved` too.

Billing
- Prepaid by the connected minute. Connected time counts only while the call is connected by
  the rule above, and never beyond the paid time (`paid_minutes * minute_s`).
- When connected time has reached the paid time (at once when the visit goes live, then after
  each `minute_s` of connected time) minute k = paid_minutes + 1 is debited, under the key
  `visit:{visit_id}:minute:{k}`. While that debit is pending, connected time stays at the paid
  time: the new minute starts when `DebitOk` arrives, so the family never pays for the ledger's
  latency. Unused paid seconds carry over a pause.
- Held elsewhere (`Facts.remote`), connected time counts only up to the latest `Proven`, and
  minute k is debited only once the call is proven at the moment the minute starts: its due
  point (where the paid time ran out), or the moment the call went live. That minute then
  starts at that proven moment, not at `DebitOk`: the family pays from a moment it was
  connected, and no later proof is needed for what the minute covers (the time proven while
  its debit was pending is counted at `DebitOk`). Time not yet proven
  when the call stops being connected (the process died, a pause) is never counted, so a
  minute that falls due after a holder's death is never charged, and the seconds it would
  have covered carry over.
- `DebitRefused` ends the visit `balance_exhausted`, at the moment the unpaid minute would
  have started. `DebitUnknown` (a timeout) issues the same `Debit` again, same key.
- No minute is debited when less than `minute_s` of the window remains at the moment it would
  start (within a microsecond; held elsewhere, the proven moment it starts at): the visit runs
  unbilled to the window's end.
- Any event at or after `window_end` ends the visit before the event is considered: `time_up`,
  or `missed` when the two parties were never present at once (one never joined; nothing was
  billed then, since billing needs both).
  `StaffEnded`, `HungUp` and `Failed` (the shell gives up) end it at once. After the end nothing
  happens.
- Ticks: one when the visit goes live or resumes, and one after each successful debit. Going
  live with no unused paid seconds issues a debit, and its outcome's tick is the first one, so
  the first tick a client sees carries the balance.
- Warnings, each at most once per visit: `low_balance` after a successful debit that leaves
  `balance // price <= 1` (the balance covers one more minute or less); `time` at the first step
  at which the visit has gone live (it may be paused since) and at most
  `warn_before_end_minutes * minute_s` of the window remains.

Time
- An event is applied at max(event.at, the latest time the meter has seen): the meter's time
  never runs backwards and accounted time is never rewritten. A presence report (`Live`,
  `Paused`) stamped before the latest one applied is stale and dropped; a report stamped before
  `window_start` is ignored (the visit opens at the window's start).
- A stop found out late: an `Observed` that ends a connected stretch may carry `stopped_at`, the
  moment the media really stopped (the trusted side's last frame, before its report). The
  connected time accounted since then is taken back, never more than this stretch accounted:
  those seconds were not a call, and they carry over like any unused paid seconds (a minute
  debited meanwhile stays paid and is used later). How far back a stop may reach is the
  shell's to bound (signalling/visits.py: at most KINWIRE_MEDIA_STALL_S). Without
  `stopped_at` a late report still applies from the meter's now.
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
END_REASONS = ("time_up", "balance_exhausted", "hung_up", "staff_ended", "failed", "missed")
MEDIA_MODES = ("direct", "relay")
PARTY_STATES = ("absent", "joined", "connected")


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
    media: str = "direct"  # who observes the call: the kiosk (direct) or the server (relay)

    def __post_init__(self) -> None:
        if not isinstance(self.price, int) or self.price <= 0:
            raise ValueError("price must be a positive whole number of credits")
        if self.media not in MEDIA_MODES:
            raise ValueError(f"media must be one of {MEDIA_MODES}")
        if self.minute_s <= 0 or self.window_end <= self.window_start:
            raise ValueError("minute_s must be positive and the window must not be empty")

    @property
    def warn_s(self) -> float:
        return self.warn_before_end_minutes * self.minute_s


@dataclass(frozen=True, slots=True)
class Facts:
    """What the meter is told about the call, each fact from the side allowed to say it."""

    # Each party: "absent" (not joined, left, or the process holding its socket is dead),
    # "joined", or "connected" (its own report of its peer connection).
    family: str = "absent"  # the family's report is advisory: is_connected never reads it
    person: str = "absent"  # the kiosk's: ICE connected with media arriving from the family
    sending: bool = True  # the kiosk's outbound audio/video advancing (False: stalled)
    server: bool = False  # relay mode: the server sees media from both, the person's advancing
    # Some of the above is held by another process than the meter's: it counts only as far
    # as that process is proven alive (Proven)
    remote: bool = False

    def __post_init__(self) -> None:
        if self.family not in PARTY_STATES or self.person not in PARTY_STATES:
            raise ValueError(f"a party's state is one of {PARTY_STATES}")


NOBODY = Facts()
EVERYTHING = Facts("connected", "connected", True, True)  # what Live stands for
NOT_CONNECTED = Facts("joined", "joined", True, False)  # what Paused stands for


def is_connected(media: str, facts: Facts) -> bool:
    """The trust model (docs/visits.md): who may say a visit is connected."""
    if facts.family == "absent" or facts.person == "absent":
        return False
    if media == "relay":
        return facts.server
    return facts.person == "connected" and facts.sending


@dataclass(frozen=True, slots=True)
class MeterState:
    """Everything a process needs to carry on a visit's meter; JSON-serialisable."""

    paid_minutes: int = 0
    connected_s: float = 0.0  # connected time accounted so far; <= paid_minutes * minute_s
    connected: bool = False  # connected by is_connected, from the facts last applied
    facts: Facts = NOBODY  # the facts last applied
    met: bool = False  # both parties were present at once at some moment
    since: float | None = None  # connected time is accounted up to here (None: not connected)
    stretch_from: float | None = None  # when the current connected stretch began
    stretch_base: float = 0.0  # connected_s then: a late stop takes back no more than since
    pending: int | None = None  # the minute whose debit awaits an outcome
    balance: int | None = None  # the balance after the last successful debit
    warned: tuple[str, ...] = ()
    went_live: bool = False
    now: float | None = None  # the latest time seen
    presence_at: float | None = None  # stamp of the latest presence report applied
    proven: float | None = None  # held elsewhere: the call's processes were alive up to here
    halted: bool = False  # the lease is lost: this process must not act
    ended: str | None = None  # one of END_REASONS

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__slots__}
        data["warned"] = list(self.warned)
        data["facts"] = {name: getattr(self.facts, name) for name in Facts.__slots__}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeterState:
        # A state stored before facts existed has none: the takeover asks for them anyway. A
        # field this version does not know (stored by a newer one) is left out.
        facts = Facts(**{k: v for k, v in data["facts"].items() if k in Facts.__slots__}) \
            if data.get("facts") else NOBODY
        known = {k: v for k, v in data.items() if k in cls.__slots__}
        return cls(**{**known, "warned": tuple(data["warned"]), "facts": facts})


# --- events: each carries `at`, the time it happened on the caller's timeline ------------

@dataclass(frozen=True, slots=True)
class Observed:  # what is known of the call now (see Presence above)
    at: float
    facts: Facts
    stopped_at: float | None = None  # a stop: when the media really stopped (see Time above)
    # held by a process that did not hold it at the last report, or stopped and back since
    # (Presence)
    moved: bool = False


@dataclass(frozen=True, slots=True)
class Live:  # shorthand: Observed(at, EVERYTHING)
    at: float


@dataclass(frozen=True, slots=True)
class Paused:  # shorthand: Observed(at, NOT_CONNECTED)
    at: float


@dataclass(frozen=True, slots=True)
class Proven:  # every process holding the call (Facts.remote) was alive at `at`
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


Event = (Observed | Live | Paused | Proven | Clock | DebitOk | DebitRefused | DebitUnknown
         | StaffEnded | HungUp | Failed | LeaseLost | TakenOver)


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
        state = replace(state, connected=False, since=None, stretch_from=None, halted=False,
                        facts=NOBODY, proven=None)
    elif state.halted:
        return state, []
    elif isinstance(event, LeaseLost):
        return replace(state, halted=True), []
    t = event.at if state.now is None else max(event.at, state.now)
    # A move (Presence): the time since the last accounting is not known to be a call, even
    # held here; what the old holders proved was fed before it.
    moved = isinstance(event, Observed) and _moves(config, state, event)
    s = replace(state if moved else _account(config, state, min(t, config.window_end)), now=t)
    if t >= config.window_end:
        reason = "time_up" if s.met else "missed"
        s, effects = replace(s, ended=reason), [End(reason)]
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
    """Count connected time up to t, never past the paid time (held elsewhere: up to the
    latest proof, and the time past the paid time waits there for the next minute)."""
    if not s.connected or s.since is None or t <= s.since:
        return s
    paid_s = s.paid_minutes * config.minute_s
    if s.facts.remote:
        upto = s.since if s.proven is None else min(t, s.proven)
        gained = min(upto - s.since, paid_s - s.connected_s)
        if gained <= 0:
            return s
        connected_s = s.connected_s + gained
        if paid_s - connected_s < EPSILON_S:
            connected_s = paid_s
        return replace(s, connected_s=connected_s, since=s.since + gained)
    connected_s = min(paid_s, s.connected_s + (t - s.since))
    if paid_s - connected_s < EPSILON_S:
        connected_s = paid_s
    return replace(s, connected_s=connected_s, since=t)


def _next_minute(config: MeterConfig, s: MeterState, t: float) -> Result:
    if not s.connected or s.pending is not None:
        return s, []
    if s.connected_s < s.paid_minutes * config.minute_s:
        return s, []
    start = t
    if s.facts.remote:  # the minute starts where the paid time ran out: proven there?
        start = s.since
        if s.proven is None or s.proven + EPSILON_S < start:
            return s, []
    if config.window_end - start < config.minute_s - EPSILON_S:
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
        # held elsewhere, `since` may lag t (counted only up to the proof): a due point already
        # passed waits for a Proven, not for a clock
        left_s = s.paid_minutes * config.minute_s - s.connected_s
        due = s.since + left_s
        if left_s > 0 and due > t:
            wakes.append(due)
    return min(wake for wake in wakes if wake > t)


def proof_wanted(config: MeterConfig, s: MeterState) -> float | None:
    """Held elsewhere: the moment the call must be proven alive at for the next minute to be
    debited (its due point), so the shell can feed `Proven` as soon as it has it. None when no
    minute waits on a proof."""
    if s.ended is not None or s.halted or not s.connected or not s.facts.remote \
            or s.pending is not None or s.since is None:
        return None
    return s.since + s.paid_minutes * config.minute_s - s.connected_s


def _debit(config: MeterConfig, minute: int) -> Debit:
    return Debit(minute, minute_key(config.visit_id, minute), config.price)


def _tick(config: MeterConfig, s: MeterState, t: float) -> Tick:
    return Tick(s.paid_minutes, max(0.0, config.window_end - t), s.balance)


def _moves(config: MeterConfig, s: MeterState, event: Observed) -> bool:
    """A fresh report of a move (a copy of the last report, same instant, moves nothing)."""
    return event.moved and event.at >= config.window_start and (
        s.presence_at is None or event.at > s.presence_at)


def _stale(s: MeterState, at: float) -> bool:
    return s.presence_at is not None and at < s.presence_at



def _on_observed(config: MeterConfig, s: MeterState, event: Observed, t: float) -> Result:
    if event.at < config.window_start or _stale(s, event.at):
        return s, []
    facts, was_remote = event.facts, s.facts.remote
    moved = _moves(config, s, event)
    met = s.met or (facts.family != "absent" and facts.person != "absent")
    s = replace(s, presence_at=event.at, facts=facts, met=met)
    connected = PRESENCE_RULE(config.media, facts)
    if connected and s.connected and (moved or (was_remote and not facts.remote)):
        # held here now, or by other processes than before: the time the old holders never
        # proved is not counted, nor what the new ones proved before the party came to them
        return replace(s, since=t), []
    if connected == s.connected:
        return s, []
    if not connected:
        if event.stopped_at is not None and s.stretch_from is not None:
            # from where the time is accounted up to (t; held elsewhere, the latest proof)
            back = min(s.since - max(event.stopped_at, s.stretch_from),
                       s.connected_s - s.stretch_base)
            if back > 0:
                s = replace(s, connected_s=s.connected_s - back)
        return replace(s, connected=False, since=None, stretch_from=None), []
    s = replace(s, connected=True, since=t, went_live=True, stretch_from=t,
                stretch_base=s.connected_s)
    if s.connected_s >= s.paid_minutes * config.minute_s:
        return s, []  # a debit follows at once; its outcome ticks, with the balance
    return s, [_tick(config, s, t)]


def _on_live(config: MeterConfig, s: MeterState, event: Live, t: float) -> Result:
    return _on_observed(config, s, Observed(event.at, EVERYTHING), t)


def _on_paused(config: MeterConfig, s: MeterState, event: Paused, t: float) -> Result:
    return _on_observed(config, s, Observed(event.at, NOT_CONNECTED), t)


def _on_clock(config: MeterConfig, s: MeterState, event: Clock, t: float) -> Result:
    return s, []


def _on_proven(config: MeterConfig, s: MeterState, event: Proven, t: float) -> Result:
    if s.proven is not None and event.at <= s.proven:
        return s, []  # nothing new
    return _account(config, replace(s, proven=event.at), min(t, config.window_end)), []


def _on_debit_ok(config: MeterConfig, s: MeterState, event: DebitOk, t: float) -> Result:
    if s.pending != event.minute:
        return s, []  # a duplicate or a late outcome: this minute is settled
    s = replace(s, paid_minutes=event.minute, pending=None, balance=event.balance)
    # Held elsewhere, the time proven while the debit was pending waited at the old paid time:
    # the new minute started at its proven due point, so that time is counted now (and, if it
    # runs past the new paid time, the next minute falls due at once, not at the next event).
    s = _account(config, s, min(t, config.window_end))
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


# The rule the machine takes presence from. A name, so a test can swap in a broken rule and
# see the simulator's checker catch it (tests/integration/test_meter_sim.py).
PRESENCE_RULE: Callable[[str, Facts], bool] = is_connected

HANDLERS: dict[type, Callable[..., Result]] = {
    Observed: _on_observed,
    Live: _on_live,
    Paused: _on_paused,
    Proven: _on_proven,
    Clock: _on_clock,
    DebitOk: _on_debit_ok,
    DebitRefused: _on_debit_refused,
    DebitUnknown: _on_debit_unknown,
    TakenOver: _on_taken_over,
    StaffEnded: _ender("staff_ended"),
    HungUp: _ender("hung_up"),
    Failed: _ender("failed"),
}
