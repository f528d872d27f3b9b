"""Clocks for tests. No test decides what to expect from the real date or time of day: a test
that books, lists slots or reads the facility's day runs on one of these clocks, handed to
`create_app(..., clock=...)` and, in Chromium, to the page (`browser_clock`).

tests/integration/test_wall_clock.py proves it: it runs the time-sensitive tests with the machine's
own clock
moved (libfaketime) to late evening, just after midnight and across a change of the clocks at the
facility, and they must pass exactly as they do at noon."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from time import monotonic as time_monotonic
from zoneinfo import ZoneInfo

from server.schema import utcnow

ZONE = ZoneInfo("America/Chicago")  # the time zone of tests/support/helpers.py Api.facility


class Clock:
    """A clock the test sets and moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def scene_clock(wall: time = time(12, 0, 20), zone: ZoneInfo = ZONE) -> Callable[[], datetime]:
    """A clock running at real speed that reads `wall` (facility-local) on the day after the
    real date when it is made: a test's slots, "today" and visit windows are then the same at
    whatever hour it runs. Only ahead of real time, so TURN credentials (expiring at a visit
    window's end) stay valid for coturn, which reads the real clock."""
    real = utcnow()
    day = real.astimezone(zone).date() + timedelta(days=1)
    offset = datetime.combine(day, wall, zone).astimezone(UTC) - real
    return lambda: utcnow() + offset


async def browser_clock(context, clock: Callable[[], datetime]) -> None:
    """Give a Playwright browser context the server's clock: its pages' Date reads `clock`
    and moves at real speed from there (Playwright's clock emulation)."""
    await context.clock.install(time=clock())


def running_clock(start: datetime) -> Callable[[], datetime]:
    """A clock that reads `start` when made and then moves at real speed: a fixed day and hour
    for what a test expects to read, with times still going forward for what it orders."""
    began = time_monotonic()
    return lambda: start + timedelta(seconds=time_monotonic() - began)
