"""Booking rules: a facility's block grid and the checks a booking must pass.

Pure functions over plain values: no database, no web. The server reads the facility and the
visits, passes them in, and turns a refusal's stable code into an HTTP answer.

The grid. Visiting hours are wall-clock times in the facility's time zone, and times are stored
in UTC. On a local date the blocks start at the wall times `hours.start + k x block`; each wall
time is turned into UTC on its own, so a day when the clocks change comes out right: a wall time
that the spring change skips has no block, and one that the autumn change repeats has two, one
per offset. A block always lasts `block` real minutes, and every instant of it must read inside
visiting hours on that date.

The checks, in the order a booking meets them: `in_the_past`, `beyond_horizon`, `not_on_grid`,
`outside_hours` (all about the window alone), then `slot_taken` (the family or the person already
has an active visit overlapping the window) and `no_capacity` (a block of the window has no free
kiosk). A block under way is still bookable while at least `LEFT_MIN` of it remains ("visit
now"). The booking horizon counts local dates: today plus `booking_horizon_days`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from common import errors

LEFT_MIN = timedelta(minutes=1)  # what must remain of a block under way to book it
_TICK = timedelta(microseconds=1)


class Refused(errors.Refused):
    """A booking or a cancellation was refused; `code` is stable and shown to clients."""


class Booked(Protocol):
    """What the room check needs of an existing visit (a `visits` row has it)."""

    facility_id: str
    family_id: str
    person_id: str
    start_at: datetime
    end_at: datetime


@dataclass(frozen=True, slots=True, order=True)
class Block:
    start: datetime  # UTC
    end: datetime  # UTC, exclusive


@dataclass(frozen=True, slots=True)
class Rules:
    zone: ZoneInfo
    block_minutes: int
    opens: time
    closes: time
    kiosks: int
    horizon_days: int
    cancel_cutoff_minutes: int

    @classmethod
    def of(cls, timezone: str, settings: Mapping[str, Any]) -> Rules:
        """From a facility's time zone and its (already validated) settings."""
        hours = settings["visit_hours"]
        return cls(ZoneInfo(timezone), int(settings["visit_block_minutes"]),
                   time.fromisoformat(hours["start"]), time.fromisoformat(hours["end"]),
                   int(settings["kiosks"]), int(settings["booking_horizon_days"]),
                   int(settings["cancel_cutoff_minutes"]))

    @property
    def block(self) -> timedelta:
        return timedelta(minutes=self.block_minutes)

    def wall(self, instant: datetime) -> datetime:
        """The facility's wall-clock time at `instant`, naive."""
        return instant.astimezone(self.zone).replace(tzinfo=None)

    def today(self, now: datetime) -> date:
        return self.wall(now).date()

    def last_day(self, now: datetime) -> date:
        return self.today(now) + timedelta(days=self.horizon_days)


def instants(wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants at which the zone's clocks read `wall` (naive): none in a spring gap,
    two in an autumn fold, one otherwise."""
    found: set[datetime] = set()
    for fold in (0, 1):
        utc = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if utc.astimezone(zone).replace(tzinfo=None) == wall:
            found.add(utc)
    return sorted(found)


def grid(rules: Rules, day: date) -> list[Block]:
    """Every block of visiting hours on a local date, in time order."""
    step = rules.block
    opens, closes = datetime.combine(day, rules.opens), datetime.combine(day, rules.closes)
    blocks: set[Block] = set()
    wall = opens
    while wall + step <= closes:
        for start in instants(wall, rules.zone):
            # The block's last instant must still read inside hours: after a spring gap a
            # block's end reads an hour later than its start suggests.
            if rules.wall(start + step - _TICK) < closes:
                blocks.add(Block(start, start + step))
        wall += step
    return sorted(blocks)


def bookable(block: Block, now: datetime) -> bool:
    """Not over, or under way with at least a minute left."""
    return block.end - now >= LEFT_MIN


def minutes_left(block: Block, now: datetime) -> int:
    """Whole minutes of the block still to come: all of it before it starts, what is left of
    it once under way (the meter bills whole minutes and never the last part of one, so a
    block booked at 23:21 with 8 min 30 s left offers 8)."""
    left = block.end - max(block.start, now)
    return max(0, int(left // timedelta(minutes=1)))


def open_blocks(rules: Rules, day: date, now: datetime) -> list[Block]:
    """The blocks of a local date that can still be booked (the day must be checked against
    the horizon first; a past day has none)."""
    if day < rules.today(now):
        return []
    return [b for b in grid(rules, day) if bookable(b, now)]


def window(rules: Rules, start: datetime, blocks: int, now: datetime) -> list[Block]:
    """The grid blocks a booking of `blocks` (>= 1) blocks from `start` (aware, any offset)
    covers, or Refused."""
    if blocks < 1:
        raise ValueError("a booking covers at least one block")
    step = rules.block
    # Differences of datetimes cannot overflow, so a start in year 1 or 9999 is refused here,
    # before any time-zone arithmetic.
    if (start - now) + step < LEFT_MIN:
        raise Refused("in_the_past", "That time has passed (a visit under way can be booked "
                                     "while a minute of its block is left).")
    if start - now > timedelta(days=rules.horizon_days + 2) \
            or rules.today(start) > rules.last_day(now):
        raise Refused("beyond_horizon", f"Visits can be booked at most {rules.horizon_days} "
                                        "days ahead.")
    start = start.astimezone(UTC)  # within days of now by here, so it cannot overflow
    wall = rules.wall(start)
    offset = wall.hour * 60 + wall.minute - (rules.opens.hour * 60 + rules.opens.minute)
    if wall.second or wall.microsecond or offset % rules.block_minutes:
        raise Refused("not_on_grid", f"Visits start on the facility's {rules.block_minutes}-"
                                     "minute grid.")
    day = grid(rules, wall.date())
    first = next((i for i, b in enumerate(day) if b.start == start), None)
    covered = day[first:first + blocks] if first is not None else []
    contiguous = all(a.end == b.start for a, b in pairwise(covered))
    if len(covered) != blocks or not contiguous:
        raise Refused("outside_hours", "The whole visit must fit the facility's visiting hours "
                                       f"({rules.opens:%H:%M}-{rules.closes:%H:%M}).")
    return covered


def free(block: Block, kiosks: int, active: Iterable[Booked]) -> int:
    """Kiosks not held by an active visit overlapping the block; never negative."""
    taken = sum(1 for v in active if v.start_at < block.end and v.end_at > block.start)
    return max(0, kiosks - taken)


def check_room(covered: Sequence[Block], *, facility_id: str, family_id: str, person_id: str,
               kiosks: int, active: Iterable[Booked]) -> None:
    """Neither party double-booked, a free kiosk in every block. `active` holds the active
    visits that overlap the window (at the facility, or of either party anywhere)."""
    start, end = covered[0].start, covered[-1].end
    overlapping = [v for v in active if v.start_at < end and v.end_at > start]
    if any(v.family_id == family_id or v.person_id == person_id for v in overlapping):
        raise Refused("slot_taken", "You or your contact already have a visit at that time.")
    here = [v for v in overlapping if v.facility_id == facility_id]
    if any(free(b, kiosks, here) == 0 for b in covered):
        raise Refused("no_capacity", "Every kiosk is taken at that time.")


def check_cancel(rules: Rules, start: datetime, now: datetime) -> None:
    """A family may cancel until `cancel_cutoff_minutes` before the start (staff any time)."""
    if now >= start - timedelta(minutes=rules.cancel_cutoff_minutes):
        raise Refused("too_late_to_cancel", "Visits can be cancelled up to "
                      f"{rules.cancel_cutoff_minutes} minutes before they start.")


def minutes_covered(balance: int, minute_price: int) -> int | None:
    """Whole visit minutes a balance pays for; None when visits are free."""
    return balance // minute_price if minute_price > 0 else None
