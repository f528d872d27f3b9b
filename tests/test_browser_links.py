"""Visits on the networks families really have (issue 21), in two Chromium browsers: the family's
Chromium runs in its own network namespace and reaches everything (the page, its socket, coturn
with relay-only ICE) through tests/impaired_link.py's emulated link; the server, coturn and the
kiosk's Chromium are on the test's side. A billed minute is MINUTE_S.

The adversary is the family's network: it goes silent mid-call (no close, no reset: a phone in a
tunnel) for 15 s, and for 60 s, long enough for the server to drop the family's socket. What must
hold: over an outage the meter bills no more frozen time than the stall threshold, and starts
again only once the family's frames reach the kiosk again; after the long one the page says
"Reconnecting" within 5 s of its socket dying and is back in the call within 5 s of the link
returning, without a click, with the paid minutes on screen equal to the ledger's.

Each scenario prints its figures (connect time, frames a second each way, billed seconds against
two-way-media seconds) for docs/visits.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from tests.browser import (
    CHROMIUM,
    KIOSK,
    PHONE,
    buy_credits,
    kiosk_sign_in,
    launch,
    require_chromium,
)
from tests.clock import scene_clock
from tests.conftest import fresh_sqlite, test_settings
from tests.helpers import Api
from tests.impaired_link import ImpairedLink, available
from tests.test_browser_endings import PASSWORD, _book_now, _minutes, _visit_row
from tests.test_browser_more import _log_in
from tests.test_browser_visit import MEDIA, PIN, _parties
from tests.turn_server import private_coturn

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

MINUTE_S = 5.0
STALL_S = 10.0  # the default KINWIRE_MEDIA_STALL_S
CREDITS = 1000  # twenty minutes at 50: the balance never ends these visits
SAMPLE_S = 0.25

# Inbound video frames decoded and audio packets received so far on this page's call.
INBOUND = """async () => {
  const pc = window.kinwireVisit && window.kinwireVisit.pc;
  if (!pc) return {frames: 0, audio: 0, pc: null};
  const stats = await pc.getStats();
  let frames = 0, audio = 0;
  stats.forEach((r) => {
    if (r.type === 'inbound-rtp' && r.kind === 'video') frames += r.framesDecoded || 0;
    if (r.type === 'inbound-rtp' && r.kind === 'audio') audio += r.packetsReceived || 0;
  });
  return {frames, audio, pc: pc.connectionState};
}"""


@dataclass
class Sample:
    at: float  # monotonic
    fam_frames: int  # frames the family decoded (from the kiosk)
    kiosk_frames: int  # frames the kiosk decoded (from the family)
    billed_s: float  # the meter's connected time, as of now
    paid: int  # minutes debited in the ledger
    status: str
    server_frames: int = 0  # relay mode: the family's video frames that reached the server


@dataclass
class Call:
    api: Api
    link: ImpairedLink
    fam: object
    kiosk: object
    seed: dict
    visit_id: str
    clock: object
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    relay: bool = False

    async def billed_s(self) -> tuple[float, str]:
        """The meter's connected time now: what is accounted on the row plus the stretch under
        way, capped at the paid time (billing/meter.py's rule)."""
        row = await _visit_row(self.api, self.visit_id)
        state = row.meter or {}
        billed = state.get("connected_s", 0.0)
        if state.get("connected") and state.get("since") is not None:
            now = self.clock().timestamp()
            paid_s = state.get("paid_minutes", 0) * MINUTE_S
            billed = min(paid_s, billed + max(0.0, now - state["since"]))
        return billed, row.status

    async def sample(self) -> Sample:
        fam, kiosk = await asyncio.gather(self.fam.evaluate(INBOUND),
                                          self.kiosk.evaluate(INBOUND))
        billed, status = await self.billed_s()
        paid = len(await _minutes(self.api, self.seed["family"].id, self.visit_id))
        seen = self.api.ctx.relay.media_seen(self.visit_id) if self.relay else {}
        server = seen.get("family", {}).get("video", (0, 0, None))[0]
        s = Sample(time.monotonic(), fam["frames"], kiosk["frames"], billed, paid, status,
                   server)
        self.samples.append(s)
        return s

    async def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await self.sample()
            await asyncio.sleep(SAMPLE_S)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


def fps(samples: list[Sample], attr: str) -> float:
    if len(samples) < 2:
        return 0.0
    first, last = samples[0], samples[-1]
    return (getattr(last, attr) - getattr(first, attr)) / (last.at - first.at)


@contextlib.asynccontextmanager
async def linked_call(tmp_path: Path, sqlite_template: Path, link: ImpairedLink,
                      relay: bool = False, **overrides) -> AsyncIterator[Call]:
    """A visit in a call, billing: the family's Chromium behind `link`, the kiosk's beside the
    server (`relay`: the facility's visits in relay mode, the server between the two; its
    peers cannot use KINWIRE_RELAY_LOOPBACK_ONLY, which wants the TURN URL on loopback while
    the family needs the link's address, so they gather all candidates and reach the browsers
    through their own allocation on the same coturn).
    Everything the test started is stopped on the way out."""
    require_chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=20_000)
    async with private_coturn(also_listen=link.near) as turn:
        settings = test_settings(fresh_sqlite(sqlite_template, tmp_path), tmp_path,
                                 visit_minute_s=MINUTE_S, credit_block=CREDITS,
                                 media_stall_s=STALL_S, turn_secret=turn.secret,
                                 turn_urls=(turn.url,), ice_relay_only=True, **overrides)
        clock = scene_clock()
        app = create_app(settings, run_migrations=False, clock=clock)
        async with TestClient(TestServer(app, host=link.near)) as client, \
                async_playwright() as pw:
            base = str(client.make_url("/")).rstrip("/")
            # The page's origin is the link's address, not loopback: a camera needs a secure
            # context, which Chromium grants plain http only on loopback unless told.
            secure = f"--unsafely-treat-insecure-origin-as-secure={base}"
            fam_browser = await launch(pw, *MEDIA, secure,
                                       executable=str(link.wrapper(CHROMIUM, tmp_path)))
            kiosk_browser = await launch(pw, *MEDIA, secure)
            try:
                api = Api(client)
                seed = await _parties(api, PASSWORD)
                if relay:
                    r = await api.call("PATCH", f"/facilities/{seed['facility_id']}",
                                       await api.admin(), json={"settings": {"media": "relay"}})
                    assert r.status == 200, r.body
                fam = await (await fam_browser.new_context(viewport=PHONE)).new_page()
                kiosk = await (await kiosk_browser.new_context(viewport=KIOSK)).new_page()
                call = Call(api, link, fam, kiosk, seed, "", clock, relay=relay)
                for page in (fam, kiosk):
                    page.on("pageerror", lambda e: call.errors.append(str(e)))
                await kiosk_sign_in(kiosk, base, seed, PIN)
                await _log_in(fam, base, seed["email"], PASSWORD)
                await buy_credits(fam, CREDITS)
                call.visit_id = await _book_now(api, seed)
                await kiosk.get_by_role(
                    "button", name="Join the visit with Alex Rivers at 12:00").click()
                await fam.get_by_role("tab", name="Visits").click()
                await fam.get_by_role(
                    "button", name="Join the visit with Dana Rivers at 12:00").click()
                joined = time.monotonic()
                while True:  # connected: frames flowing both ways
                    s = await call.sample()
                    if s.fam_frames > 0 and s.kiosk_frames > 0:
                        break
                    assert time.monotonic() - joined < 20, f"the call never connected: {s}"
                    await asyncio.sleep(0.1)
                call.connect_s = time.monotonic() - joined
                yield call
            finally:
                await fam_browser.close()
                await kiosk_browser.close()


def _dump(call: Call, t0: float, name: str) -> None:
    """The samples, relative to t0, for a failing run's reader (and the figures)."""
    lines = [f"{s.at - t0:7.2f} fam {s.fam_frames:6d} kiosk {s.kiosk_frames:6d} billed "
             f"{s.billed_s:7.2f} paid {s.paid:3d} {s.status}" for s in call.samples]
    Path(tempfile.gettempdir(), f"links-{name}.txt").write_text("\n".join(lines) + "\n")


def _last_frame_before(call: Call, t: float) -> Sample:
    """The last sample before t at which the kiosk's frame count had moved."""
    before = [s for s in call.samples if s.at <= t]
    for earlier, later in zip(reversed(before[:-1]), reversed(before), strict=False):
        if later.kiosk_frames != earlier.kiosk_frames:
            return later
    return before[0]


def _moved(earlier: Sample, later: Sample, attr: str) -> bool:
    """Frames came between two samples (a new session's count starts again from 0)."""
    return getattr(later, attr) > (getattr(earlier, attr) if getattr(later, attr) >=
                                   getattr(earlier, attr) else 0)


def _first_both_after(call: Call, t: float) -> Sample | None:
    """The first sample after t by which frames had come both ways since t."""
    after = [s for s in call.samples if s.at >= t]
    fam = kiosk = False
    for earlier, later in itertools.pairwise(after):
        fam = fam or _moved(earlier, later, "fam_frames")
        kiosk = kiosk or _moved(earlier, later, "kiosk_frames")
        if fam and kiosk:
            return later
    return None


async def _outage(call: Call, seconds: float, name: str, *, watch=None) -> dict:
    """Run clean for 8 s, cut the link for `seconds`, run 15 s more; the figures. `watch`: a
    coroutine run alongside the outage (it gets the moment the link went down)."""
    link = call.link
    await call.run_for(8)
    before = call.between(call.samples[0].at + 2, time.monotonic())
    link.down()
    down_at = time.monotonic()
    watcher = asyncio.ensure_future(watch(down_at)) if watch else None
    await call.run_for(seconds)
    link.up()
    up_at = time.monotonic()
    await call.run_for(15)
    watched = await watcher if watcher else None
    _dump(call, down_at, name)
    last = _last_frame_before(call, down_at)
    frozen = call.between(down_at, up_at)
    back = _first_both_after(call, up_at)
    assert back is not None, "frames did not come back both ways after the outage"
    paused_level = frozen[-1].billed_s
    resumed = next((s for s in call.between(up_at, time.monotonic())
                    if s.billed_s > paused_level + 1e-3), None)
    assert resumed is not None, "billing never resumed"
    # The trusted side's first frame after the link: the kiosk's in direct mode, the server's
    # in relay mode (it sees the family's frames before the kiosk has decoded them)
    trusted = "server_frames" if call.relay else "kiosk_frames"
    trusted_back = next(later for earlier, later in itertools.pairwise(call.samples)
                        if later.at >= up_at and _moved(earlier, later, trusted))
    after = call.between(back.at + 2, time.monotonic())
    figures = {
        "connect_s": call.connect_s, "fps_before": (fps(before, "fam_frames"),
                                                    fps(before, "kiosk_frames")),
        "fps_after": (fps(after, "fam_frames"), fps(after, "kiosk_frames")),
        "billed_frozen_max": max(s.billed_s for s in frozen) - last.billed_s,
        "billed_frozen": paused_level - last.billed_s,
        "back_s": back.at - up_at, "trusted_back_s": trusted_back.at - up_at,
        "resumed_s": resumed.at - up_at, "minutes": call.samples[-1].paid, "watched": watched}
    print(f"\n{name}: " + ", ".join(
        f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    return figures


def _check_billing(f: dict) -> None:
    """What the issue requires of every outage: frozen time billed at most the stall
    threshold at any moment (before the stop is reported: the kiosk sees it within about
    media_gap_s + its half-second poll), and once the stop is in, no more than the kiosk's poll
    and this test's sampling can blur (the meter takes back the time since the last frame);
    billing starts again only with frames (one sample of slack: read a few ms apart)."""
    assert f["billed_frozen_max"] <= STALL_S, f
    assert f["billed_frozen"] <= 1.5, f
    assert f["resumed_s"] >= f["trusted_back_s"] - SAMPLE_S - 0.1, f


@pytest.mark.timeout(180)
async def test_a_15_s_outage_mid_call_bills_no_frozen_time(sqlite_template: Path,
                                                           tmp_path: Path) -> None:
    with ImpairedLink(seed=15) as link:
        async with linked_call(tmp_path, sqlite_template, link) as call:
            figures = await _outage(call, 15, "outage15")
            assert call.errors == [], call.errors
    _check_billing(figures)
    assert figures["back_s"] <= 5.0, figures


@pytest.mark.timeout(180)
async def test_a_15_s_outage_in_relay_mode(sqlite_template: Path, tmp_path: Path) -> None:
    """The same outage with the server between the parties: the server itself sees the
    family's picture stop and pauses the meter from its last frame."""
    with ImpairedLink(seed=17) as link:
        async with linked_call(tmp_path, sqlite_template, link, relay=True) as call:
            figures = await _outage(call, 15, "relay15")
            assert call.errors == [], call.errors
    _check_billing(figures)
    assert figures["back_s"] <= 5.0, figures


@pytest.mark.timeout(240)
async def test_after_a_60_s_outage_the_page_reconnects_by_itself(sqlite_template: Path,
                                                                 tmp_path: Path) -> None:
    from playwright.async_api import expect

    async def family_page(down_at: float) -> dict:
        html, status = call.fam.locator("html"), call.fam.locator("#visit-status")
        await expect(html).not_to_have_attribute("data-socket", "online", timeout=10_000)
        offline_s = time.monotonic() - down_at
        await expect(status).to_contain_text("Reconnecting", timeout=2_000)
        shown_s = time.monotonic() - down_at
        await expect(html).to_have_attribute("data-socket", "online", timeout=120_000)
        online = time.monotonic()
        # The paid minutes on screen equal the ledger's within a second of the socket's return.
        while True:
            shown = int(await call.fam.locator("#visit-paid").get_attribute("data-paid"))
            ledger = len(await _minutes(call.api, call.seed["family"].id, call.visit_id))
            if shown == ledger:
                break
            assert time.monotonic() - online <= 1.0, (shown, ledger)
            await asyncio.sleep(0.05)
        return {"offline_s": round(offline_s, 1), "reconnecting_s": round(shown_s, 1),
                "paid_equal_s": round(time.monotonic() - online, 2)}

    with ImpairedLink(seed=60) as link:
        async with linked_call(tmp_path, sqlite_template, link) as call:
            figures = await _outage(call, 60, "outage60", watch=family_page)
            assert call.errors == [], call.errors
    _check_billing(figures)
    # "Reconnecting" within 5 s of the socket dying: the link's death is the socket's.
    assert figures["watched"]["reconnecting_s"] <= 5.0, figures
    assert figures["back_s"] <= 5.0, figures


@pytest.mark.timeout(180)
async def test_when_only_the_media_dies_both_screens_say_paused_and_why(
        sqlite_template: Path, tmp_path: Path) -> None:
    """UDP alone is cut (the media through TURN; the pages' sockets are TCP and live on): a
    network that drops UDP. The family's screen must say it is paused and not charged, with how
    long it has had no picture, and the kiosk's the same for its side; both state the
    frozen-call bound; and the meter agrees with what they say."""
    from playwright.async_api import expect

    with ImpairedLink(seed=16) as link:
        async with linked_call(tmp_path, sqlite_template, link) as call:
            for page in (call.fam, call.kiosk):
                await expect(page.locator("#visit-threshold")).to_have_text(
                    f"A frozen call is never charged for more than {STALL_S:.0f} s.")
            await call.run_for(3)
            link.down(only="udp")
            down_at = time.monotonic()
            await expect(call.fam.locator("#visit-status")).to_have_text(re.compile(
                r"Paused: no picture from Dana Rivers for \d+ s, you are not being charged\."))
            family_s = time.monotonic() - down_at
            await expect(call.kiosk.locator("#visit-status")).to_have_text(re.compile(
                r"Paused: no picture from Alex Rivers for \d+ s\. The family is not being "
                r"charged\."))
            paused = await call.sample()
            assert paused.status == "paused"
            await asyncio.sleep(3)
            counted = await call.fam.locator("#visit-status").text_content()
            seconds = int(re.search(r"for (\d+) s", counted).group(1))
            assert seconds >= 4, counted  # it counts on: 2 s to pause, 3 s since
            assert (await call.sample()).billed_s == pytest.approx(paused.billed_s, abs=1e-3)
            link.up()
            await expect(call.fam.locator("#visit-status")).to_have_text(
                "Connected to Dana Rivers. The meter is running.")
            assert call.errors == [], call.errors
    print(f"\nUDP cut: the family's screen said paused {family_s:.1f} s after")
    assert family_s <= 5.0


PHASE_S = 14.0
LINKS = [  # name, impairment each way, whether the call must stay whole on it
    ("clean", {}, True),
    ("150 ms + 2% loss", {"delay_ms": 150, "loss": 0.02}, True),
    ("1 Mbit/s + 80 ms", {"delay_ms": 80, "loss": 0.0, "rate_kbit": 1000}, True),
    ("300 kbit/s + 80 ms", {"delay_ms": 80, "rate_kbit": 300}, False),
]


@pytest.mark.timeout(240)
async def test_a_call_across_thin_and_lossy_links(sqlite_template: Path, tmp_path: Path) -> None:
    """One call, the link changed under it every PHASE_S: clean, 150 ms each way with 2% loss,
    1 Mbit/s with 80 ms, 300 kbit/s. On each: frames a second each way, seconds of two-way media
    (both pictures moving) and seconds billed. On any link the family is never billed for a
    freeze beyond the outage gap (plus one sample's blur); the first three must carry the call
    whole. 300 kbit/s is below what the camera sends (issue 21 item 4, not done):
    its figures are printed, and only the billing rule is held there."""
    with ImpairedLink(seed=21) as link:
        async with linked_call(tmp_path, sqlite_template, link) as call:
            phases = []
            for name, impairment, whole in LINKS:
                link.set(uncapped=True, delay_ms=0, loss=0)
                link.set(**impairment)
                start = time.monotonic()
                await call.run_for(PHASE_S)
                phases.append((name, whole, call.between(start + 3, time.monotonic())))
            assert call.errors == [], call.errors
    print()
    for name, whole, samples in phases:
        two_way = sum(later.at - earlier.at for earlier, later in itertools.pairwise(samples)
                      if _moved(earlier, later, "fam_frames")
                      and _moved(earlier, later, "kiosk_frames"))
        billed = samples[-1].billed_s - samples[0].billed_s
        span = samples[-1].at - samples[0].at
        f, k = fps(samples, "fam_frames"), fps(samples, "kiosk_frames")
        print(f"{name}: frames/s family<-kiosk {f:.1f}, kiosk<-family {k:.1f}; two-way media "
              f"{two_way:.1f} s of {span:.1f} s, billed {billed:.1f} s")
        assert billed <= span - _unbillable(samples) + 2 * SAMPLE_S + 0.2, \
            (name, billed, two_way, span)
        if whole:
            assert two_way >= 0.85 * span and min(f, k) >= 10, (name, two_way, span, f, k)


def _unbillable(samples: list[Sample]) -> float:
    """Frozen seconds the meter must not bill: of each stretch in which the pictures did not
    both move, what lasted beyond media_gap_s (2 s) and the kiosk's half-second poll. A
    shorter stutter is part of a call (a keyframe wait, a burst of loss) and is billed."""
    frozen, run = 0.0, 0.0
    for earlier, later in itertools.pairwise(samples):
        if _moved(earlier, later, "fam_frames") and _moved(earlier, later, "kiosk_frames"):
            frozen, run = frozen + max(0.0, run - 2.5), 0.0
        else:
            run += later.at - earlier.at
    return frozen + max(0.0, run - 2.5)
