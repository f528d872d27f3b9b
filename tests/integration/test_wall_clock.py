"""The suite passes at any hour (issue 20, item 0).

At 05:16 UTC (23:16 in Chicago) the accessibility test once failed: it read the real clock, and the
family's booking grid had no blocks left that day. Every test that books, lists slots or shows the
facility's day now runs on an injected clock (tests/support/clock.py). This check proves it: it
runs those
tests with the machine's own clock moved by libfaketime (Debian's `faketime`, installed by
scripts/system-deps.sh) to the hours where a wall-clock dependency shows:

- 23:30 at the facility (after visiting hours: "today" has no blocks left by the real clock);
- 00:05 at the facility (the local date has just changed; UTC's changed hours earlier) on the
  day Chicago's clocks go back (2027-11-07 02:00 CDT -> 01:00 CST: a 25-hour "today");
- a minute before Chicago's clocks go forward (2027-03-14 02:00 CST -> 03:00 CDT), so the run
  crosses the change.

The adversary is the calendar: a test that still reads the real date or hour fails here at one
of them (the accessibility test did, at 23:30, before it took tests/support/clock.py's scene clock).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from datetime import datetime, time, timedelta
from pathlib import Path

import pytest

from server.schema import utcnow
from tests.support.clock import ZONE

ROOT = Path(__file__).resolve().parents[2]
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

# The time-sensitive tests: they book, list a facility's slots or show its day and visits.
WITHOUT_BROWSER = ["tests/integration/test_booking.py",
                   "tests/integration/test_roles.py::test_role_matrix"]
TIME_SENSITIVE = [*WITHOUT_BROWSER, "tests/browser/test_accessibility.py"]
# The browser visits book "the block under way" from the grid, on tests/support/clock.py's scene
# clock.
# libfaketime could move only their server side, which reads the scene clock, not the real one;
# their pages keep Chromium's own clock (Chromium under libfaketime takes ~50 s to draw a page),
# so a run here would prove nothing more and cost ~30 s a scenario. Listed for the rule below.
SCENE_CLOCK_ONLY = [
    "tests/browser/test_browser_visit.py",
    "tests/browser/test_browser_endings.py",
    "tests/browser/test_browser_booking.py",
    "tests/browser/test_browser_phone.py",  # reads the week view's first day, on a running_clock
    "tests/browser/test_browser_spanish.py",  # books the block under way, on the scene clock
]


def _local_today_at(wall: time) -> datetime:
    # The real date on purpose: this check moves the machine's clock relative to it.
    return datetime.combine(utcnow().astimezone(ZONE).date(), wall, ZONE)


# Every time-sensitive test runs at 23:30, the hour that broke the accessibility test (UTC's
# date is already tomorrow; today's blocks are over). The other hours move the date and hour
# arithmetic, which test_booking covers: not the pages (the browser shows the server's grid) nor
# the role matrix (its one booking is test_booking's). Both cost ~25 s of a loaded run each, for
# nothing test_booking does not see.
# Just after midnight is taken on the day the clocks go back (a 25-hour day: "today" at 00:05
# is that day), and the run a minute before they go forward crosses the change; one
# scenario fewer than when midnight and the fall-back had one each (~40 s of a loaded run).
SCENARIOS: dict[str, tuple[datetime, list[str]]] = {
    "23:30 at the facility": (_local_today_at(time(23, 30)), TIME_SENSITIVE),
    "00:05 at the facility, the day the clocks go back": (
        datetime(2027, 11, 7, 0, 5, tzinfo=ZONE), WITHOUT_BROWSER[:1]),
    "clocks go forward": (datetime(2027, 3, 14, 1, 59, tzinfo=ZONE), WITHOUT_BROWSER[:1]),
}
PARALLEL = 1  # one scenario at a time: two at a time took 341 s against ~170 s (2026-12-06)
# ~25-30 s each on a quiet machine; 240 s was not enough with five other test runs beside it.
SCENARIO_S_MAX = 420


def faked_env(at: datetime) -> dict[str, str]:
    """The environment that moves a process's (and its children's) real-time clock to `at`,
    running on from there. Monotonic clocks are left alone (timeouts stay true), and libfaketime's
    shared memory is off: with it every clock read takes a semaphore (test_booking 13 s ->
    108 s). Its fix for condition variables on the monotonic clock is off too: nothing here is
    faked on that clock, and the fix doubled the CPU of every wait on one (Python's GIL hand-off:
    test_booking beside three busy loops took 40 s and 14.7 s of CPU with it, 19 s and 7.5 s
    without)."""
    offset_s = round((at - utcnow()).total_seconds())
    return {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"{offset_s:+d}",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_DISABLE_SHM": "1",
            "FAKETIME_FORCE_MONOTONIC_FIX": "0",
            "PYTHONUNBUFFERED": "1"}  # a scenario killed at its timeout still shows its progress


async def _run(argv: list[str], env: dict[str, str], timeout_s: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        return -9, out.decode(errors="replace") + f"\n(killed after {timeout_s:.0f} s)"
    return proc.returncode or 0, out.decode(errors="replace")


async def _scenario(name: str, at: datetime, tests: list[str], tmp: Path) -> str | None:
    """None if the tests pass with the clock moved to `at`; else what went wrong."""
    env = faked_env(at)
    # The clock really moved: a child reads it first.
    read = "from datetime import datetime, UTC; print(datetime.now(UTC).isoformat())"
    code, out = await _run([sys.executable, "-c", read], env, 30)
    seen = datetime.fromisoformat(out.strip().splitlines()[-1])
    if code or abs(seen - at) > timedelta(minutes=2):
        return f"{name}: libfaketime did not move the clock to {at.isoformat()} (read {seen})"
    basetemp = tmp / re.sub(r"\W+", "-", name)
    # SQLite only: libfaketime moves our processes' clock, not PostgreSQL's, and the hour
    # arithmetic under test is the service's own, the same on either store (~25% of a run).
    code, out = await _run([sys.executable, "-m", "pytest", "-q", f"--basetemp={basetemp}",
                            "-k", "not postgresql", *tests], env, SCENARIO_S_MAX)
    if code:
        return f"--- {name} ({at.isoformat()}): exit {code}\n" + "\n".join(out.splitlines()[-40:])
    return None


@pytest.fixture
def libfaketime() -> Path:
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} is missing: scripts/system-deps.sh installs Debian's "
                    "faketime", pytrace=False)
    return LIBFAKETIME


@pytest.mark.timeout(2 * SCENARIO_S_MAX + 120)
async def test_the_time_sensitive_tests_pass_at_any_hour(libfaketime: Path,
                                                         tmp_path: Path) -> None:
    gate = asyncio.Semaphore(PARALLEL)

    async def one(name: str, at: datetime, tests: list[str]) -> str | None:
        async with gate:
            return await _scenario(name, at, tests, tmp_path)

    results = await asyncio.gather(*(one(n, at, t) for n, (at, t) in SCENARIOS.items()))
    failures = [r for r in results if r]
    assert not failures, "\n\n".join(failures)


BOOKS = re.compile(r"/slots|\"POST\", \"/visits\"|#slots")


def test_every_test_that_books_is_checked_at_every_hour() -> None:
    """A new test that books or reads the slot grid must be listed above, or it could read the
    real clock unnoticed."""
    listed = {t.split("::")[0] for t in TIME_SENSITIVE + SCENE_CLOCK_ONLY}
    booking = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("*/test_*.py")
               if p.name != Path(__file__).name and BOOKS.search(p.read_text())}
    assert booking - listed == set(), booking - listed
