"""Visits on the networks families really have (issue 21), in two Chromium browsers: the family's
Chromium runs in its own network namespace and reaches everything (the page, its socket, coturn
with relay-only ICE) through tests/support/impaired_link.py's emulated link
(tests/support/linked_call.py); the
server, coturn and the kiosk's Chromium are on the test's side. A billed minute is MINUTE_S.

The adversary is the family's network: it goes silent mid-call (no close, no reset: a phone in a
tunnel) for OUTAGE_S, which spans two billed minutes and outlasts the stall threshold; once for
less than the server's socket timeout, once with that timeout shortened (KINWIRE_WS_HEARTBEAT_S)
so that the server drops the family's socket mid-outage, as a long outage makes it do with the
default. What must hold: over an outage the meter bills no more frozen time than the stall
threshold, and starts again only once the family's frames reach the kiosk again; when the server
dropped the socket, the page says "Reconnecting" within 5 s of its socket dying and is back in
the call within 5 s of the link returning, without a click, with the paid minutes on screen
equal to the ledger's. On a lossy link the call stays whole and is billed as it is connected.

The figures across clean, lossy and thin links are a benchmark: bench/scenarios/links.py.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import tempfile
import time
from pathlib import Path

import pytest

from signalling.transport_cc import URI
from tests.browser.test_browser_endings import _minutes
from tests.conftest import fresh_sqlite
from tests.support.impaired_link import ImpairedLink, available
from tests.support.linked_call import SAMPLE_S, Call, fps, linked_call, moved, phase

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

STALL_S = 6.0  # KINWIRE_MEDIA_STALL_S: shorter than an outage, so that its bound is tested
OUTAGE_S = 12.0  # more than two billed minutes (5 s) and than the stall threshold
HEARTBEAT_S = 4.0  # the server drops a silent socket 4-6 s in (a ping, then half that for a pong)
# KINWIRE_TEST_LONG_OUTAGE=1: the dropped-socket test as the issue tells it, a 60 s outage with
# the server's default heartbeat (20 s), instead of 12 s with HEARTBEAT_S: ~50 s longer, so not
# in make test; run by hand to check that the short form still stands for the long one.
LONG_OUTAGE = os.environ.get("KINWIRE_TEST_LONG_OUTAGE") == "1"
BEFORE_S = 5.0  # clean call before the link goes down
AFTER_MAX_S = 15.0  # the longest the test waits for the call and billing to come back


def _call(tmp_path: Path, sqlite_template: Path, link: ImpairedLink, **overrides):
    return linked_call(tmp_path, fresh_sqlite(sqlite_template, tmp_path), link,
                       media_stall_s=STALL_S, **overrides)


def _dump(call: Call, t0: float, name: str) -> None:
    """The samples, relative to t0, for a failing run's reader (and the figures)."""
    lines = [f"{s.at - t0:7.2f} fam {s.fam_frames:6d} kiosk {s.kiosk_frames:6d} billed "
             f"{s.billed_s:7.2f} paid {s.paid:3d} {s.status} {s.reason}" for s in call.samples]
    Path(tempfile.gettempdir(), f"links-{name}.txt").write_text("\n".join(lines) + "\n")


def _last_frame_before(call: Call, t: float):
    """The last sample before t at which the kiosk's frame count had moved."""
    before = [s for s in call.samples if s.at <= t]
    for earlier, later in zip(reversed(before[:-1]), reversed(before), strict=False):
        if later.kiosk_frames != earlier.kiosk_frames:
            return later
    return before[0]


def _first_both_after(call: Call, t: float):
    """The first sample after t by which frames had come both ways since t."""
    after = [s for s in call.samples if s.at >= t]
    fam = kiosk = False
    for earlier, later in itertools.pairwise(after):
        fam = fam or moved(earlier, later, "fam_frames")
        kiosk = kiosk or moved(earlier, later, "kiosk_frames")
        if fam and kiosk:
            return later
    return None


def _first_moved_after(call: Call, t: float, attr: str):
    return next((later for earlier, later in itertools.pairwise(call.samples)
                 if later.at >= t and moved(earlier, later, attr)), None)


def _before(call: Call, sample):
    """The sample taken just before `sample`."""
    return call.samples[call.samples.index(sample) - 1]


def _resumed_after(call: Call, t: float, level: float):
    return next((s for s in call.between(t, time.monotonic()) if s.billed_s > level + 1e-3), None)


async def _outage(call: Call, name: str, *, watch=None, outage_s: float = OUTAGE_S) -> dict:
    """Run clean for BEFORE_S, cut the link for OUTAGE_S, then run until the pictures and the
    billing are back (and `watch` is done) and 2 s more; the figures. `watch`: a coroutine run
    alongside the outage (it gets the moment the link went down)."""
    link = call.link
    await call.run_for(BEFORE_S)
    before = call.between(call.samples[0].at + 1, time.monotonic())
    link.down()
    down_at = time.monotonic()
    watcher = asyncio.ensure_future(watch(down_at)) if watch else None
    await call.run_for(outage_s)
    link.up()
    up_at = time.monotonic()
    frozen = call.between(down_at, up_at)
    paused_level = frozen[-1].billed_s
    # The trusted side's first frame after the link: the kiosk's in direct mode, the server's
    # in relay mode (it sees the family's frames before the kiosk has decoded them)
    trusted = "server_frames" if call.relay else "kiosk_frames"

    def all_back() -> bool:
        return bool(_first_both_after(call, up_at) and _resumed_after(call, up_at, paused_level)
                    and _first_moved_after(call, up_at, trusted)
                    and (watcher is None or watcher.done()))

    while time.monotonic() - up_at < AFTER_MAX_S and not all_back():
        await call.run_for(0.5)
    await call.run_for(2)  # the frame rate once back
    watched = await watcher if watcher else None
    _dump(call, down_at, name)
    last = _last_frame_before(call, down_at)
    back = _first_both_after(call, up_at)
    assert back is not None, "frames did not come back both ways after the outage"
    resumed = _resumed_after(call, up_at, paused_level)
    assert resumed is not None, "billing never resumed"
    trusted_back = _first_moved_after(call, up_at, trusted)
    after = call.between(back.at, time.monotonic())
    figures = {
        "connect_s": call.connect_s, "fps_before": (fps(before, "fam_frames"),
                                                    fps(before, "kiosk_frames")),
        "fps_after": (fps(after, "fam_frames"), fps(after, "kiosk_frames")),
        "billed_frozen_max": max(s.billed_s for s in frozen) - last.billed_s,
        "billed_frozen": paused_level - last.billed_s,
        "back_s": back.at - up_at, "trusted_back_s": trusted_back.at - up_at,
        "resumed_s": resumed.at - up_at, "minutes": call.samples[-1].paid,
        # how long after the trusted side's frames were last read unmoved the meter was read
        # running again (negative: billing before frames)
        "resumed_after_still_s": resumed.billed_at - _before(call, trusted_back).read_at(trusted),
        "reasons": sorted({s.reason for s in frozen if s.reason}), "watched": watched}
    print(f"\n{name}: " + ", ".join(
        f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
    return figures


def _check_billing(f: dict) -> None:
    """What the issue requires of every outage: frozen time billed at most the stall
    threshold at any moment (before the stop is reported: the kiosk sees it within about
    media_gap_s + its half-second poll), and once the stop is in, no more than the kiosk's poll
    and this test's sampling can blur (the meter takes back the time since the last frame);
    billing starts again only with frames: the meter may not be read running before the
    trusted side's frame count was last read unmoved (by the reads' own times: a sample
    takes 0.1-0.5 s under load, so sample times blurred it by more than the 0.35 s once
    allowed; 0.1 s for the trusted side's frame counter against what its report uses)."""
    assert f["billed_frozen_max"] <= STALL_S, f
    # 2 s: the kiosk reports from its own half-second poll of the stats, whose timers a
    # starved Chromium runs late (1.77 s once in a full run on two cores, frames at 14/s);
    # without the take-back the whole stall threshold would stay billed
    assert f["billed_frozen"] <= 2.0, f
    assert f["resumed_after_still_s"] >= -0.1, f


@pytest.mark.timeout(150)
async def test_an_outage_mid_call_bills_no_frozen_time(sqlite_template: Path,
                                                       tmp_path: Path) -> None:
    """The server keeps the family's silent socket through it (the default heartbeat): the
    page's new socket and offer meet a server that still holds the old one."""
    with ImpairedLink(seed=15) as link:
        async with _call(tmp_path, sqlite_template, link) as call:
            figures = await _outage(call, "outage")
            assert call.errors == [], call.errors
    _check_billing(figures)
    assert figures["back_s"] <= 5.0, figures
    assert "family_away" not in figures["reasons"], figures  # the socket outlived the outage


@pytest.mark.timeout(150)
async def test_an_outage_in_relay_mode(sqlite_template: Path, tmp_path: Path) -> None:
    """The same outage with the server between the parties: the server itself sees the
    family's picture stop and pauses the meter from its last frame."""
    with ImpairedLink(seed=17) as link:
        async with _call(tmp_path, sqlite_template, link, relay=True) as call:
            figures = await _outage(call, "relay")
            assert call.errors == [], call.errors
    _check_billing(figures)
    assert figures["back_s"] <= 5.0, figures


# When the family's page marks its socket down and first says "Reconnecting", on its own clock.
MARKS_JS = """() => {
  window.socketDownAt = window.reconnectingAt = null;
  const root = document.documentElement, status = document.getElementById("visit-status");
  const mark = () => {
    const now = performance.now();
    if (root.dataset.socket !== "online" && window.socketDownAt === null) {
      window.socketDownAt = now;
    }
    if (status.textContent.includes("Reconnecting") && window.reconnectingAt === null) {
      window.reconnectingAt = now;
    }
  };
  new MutationObserver(mark).observe(root, {attributes: true, attributeFilter: ["data-socket"]});
  new MutationObserver(mark).observe(status, {childList: true, characterData: true,
                                              subtree: true});
}"""


@pytest.mark.timeout(240 if LONG_OUTAGE else 150)
async def test_after_the_server_drops_its_socket_the_page_reconnects_by_itself(
        sqlite_template: Path, tmp_path: Path) -> None:
    """The outage outlasts the server's socket timeout (KINWIRE_WS_HEARTBEAT_S shortened to
    HEARTBEAT_S, as a minute-long outage outlasts the default 20 s): the server drops the
    family's socket and tells the kiosk the family left, while the family's page, which hears
    nothing, must find its socket dead by itself, say so, and rejoin once the link is back."""
    from playwright.async_api import expect

    async def family_page(down_at: float) -> dict:
        # The page's time when the link went down: its time now less what passed since, read
        # after the answer (so at most earlier than the truth: the figures err long).
        page_ms = await call.fam.evaluate("performance.now()")
        down_ms = page_ms - (time.monotonic() - down_at) * 1000
        html, status = call.fam.locator("html"), call.fam.locator("#visit-status")
        await expect(html).not_to_have_attribute("data-socket", "online", timeout=10_000)
        await expect(status).to_contain_text("Reconnecting", timeout=2_000)
        # On the page's own clock (MARKS_JS): read from here, Playwright's polling of the
        # attribute added up to ~0.5 s under load (5.2 s against the 5 s rule twice, 12-07).
        offline_ms, shown_ms = await call.fam.evaluate(
            "() => [window.socketDownAt, window.reconnectingAt]")
        offline_s, shown_s = (offline_ms - down_ms) / 1000, (shown_ms - down_ms) / 1000
        await expect(html).to_have_attribute("data-socket", "online",
                                             timeout=(outage_s + 45) * 1000)
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

    overrides = {} if LONG_OUTAGE else {"ws_heartbeat_s": HEARTBEAT_S}
    outage_s = 60.0 if LONG_OUTAGE else OUTAGE_S
    with ImpairedLink(seed=60) as link:
        async with _call(tmp_path, sqlite_template, link, **overrides) as call:
            await call.fam.evaluate(MARKS_JS)
            figures = await _outage(call, "dropped", watch=family_page,
                                    outage_s=outage_s)
            assert call.errors == [], call.errors
    # The server did drop the family's socket while the link was down: the case under test.
    assert "family_away" in figures["reasons"], figures
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
        async with _call(tmp_path, sqlite_template, link) as call:
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
            # Still counting, the peer connection's own "disconnected" (~5 s in) included.
            counted = await call.fam.locator("#visit-status").text_content()
            counting = re.search(r"for (\d+) s", counted)
            assert counting, counted
            seconds = int(counting[1])
            assert seconds >= 4, counted  # it counts on: 2 s to pause, 3 s since
            assert (await call.sample()).billed_s == pytest.approx(paused.billed_s, abs=1e-3)
            link.up()
            await expect(call.fam.locator("#visit-status")).to_have_text(
                "Connected to Dana Rivers. The meter is running.")
            assert call.errors == [], call.errors
    print(f"\nUDP cut: the family's screen said paused {family_s:.1f} s after")
    assert family_s <= 5.0


LOSSY_S = 10.0
CLEAN_S = 4.0  # the same call on a clean link first: the frame rates this host gives it


async def _clean_then(tmp_path: Path, sqlite_template: Path, seed: int, relay: bool,
                      impairment: dict, settle_s: float, measure_s: float):
    """A call CLEAN_S on a clean link, then `impairment` for settle_s + measure_s: the clean
    stretch's figures (its first second left out), the measured stretch's, the share of its
    clean frame rate each way kept ({"family": ..., "kiosk": ...}), and the answer to the
    family page's offer (SDP)."""
    with ImpairedLink(seed=seed) as link:
        async with _call(tmp_path, sqlite_template, link, relay=relay) as call:
            clean_at = time.monotonic()
            await call.run_for(CLEAN_S)
            link.set(**impairment)
            changed_at = time.monotonic()
            await call.run_for(settle_s + measure_s)
            assert call.errors == [], call.errors
            answer = await call.fam.evaluate(
                "() => window.kinwireVisit.pc.remoteDescription.sdp")
    clean = phase(call.between(clean_at + 1, changed_at))
    p = phase(call.between(changed_at + settle_s, time.monotonic()))
    kept = {side: p[f"fps_{side}"] / max(clean[f"fps_{side}"], 1e-9)
            for side in ("family", "kiosk")}
    return clean, p, kept, answer


@pytest.mark.timeout(120)
@pytest.mark.parametrize("relay", [False, True], ids=["direct", "relay"])
async def test_a_call_on_a_lossy_link_stays_whole_and_is_billed_as_connected(
        sqlite_template: Path, tmp_path: Path, relay: bool) -> None:
    """150 ms each way with 2% random loss (issue 21's lossy link): the call must carry on
    whole (both pictures moving nearly all the time, each way at least 0.6 of the frame rate
    the same call had on the clean link just before), and the meter must bill it as
    connected: no more than the call minus its freezes beyond a stutter (nothing frozen
    billed), and no less than its two-way media time (loss must not pause it), each within two
    samples' blur. In relay mode too: there the family's link is its link to the server's
    forwarding relay, whose own bandwidth estimate under this loss (35-58 kbit/s) once held the
    family's picture at the kiosk to 4-8 frames a second of 20.
    The rates are compared with the clean link's, not with the camera's 20 a second: with the
    whole suite on two cores, the browsers decoded 8.6-9.9 a second on some runs, on any link."""
    clean, p, kept, _ = await _clean_then(tmp_path, sqlite_template, 21, relay,
                                       {"delay_ms": 150, "loss": 0.02}, 2.0, LOSSY_S - 2.0)
    print(f"\nlossy: {', '.join(f'{k} {v:.1f}' for k, v in p.items())}; clean fps "
          f"{clean['fps_family']:.1f}/{clean['fps_kiosk']:.1f}")
    assert min(clean["fps_family"], clean["fps_kiosk"]) >= 5, ("the host could not carry even "
                                                               "the clean call", clean)
    assert p["billed_s"] <= p["span_s"] - p["unbillable_s"] + 2 * SAMPLE_S + 0.2, p
    # the kiosk's half-second poll may restart the meter after a freeze that late
    assert p["billed_s"] >= p["two_way_s"] - 2 * SAMPLE_S - 0.5, p
    # Both pictures moving in 3/4 of the quarter-second samples at least: on 2026-12-07's
    # slower host a full run gave 0.825 in relay mode with both rates healthy (18.8 and 13.4
    # frames/s; a sample with no new frame is a 0.25 s hiccup of either decoder), where 0.85
    # was the floor. What is billed of the freezes is bounded above, whatever this share.
    assert p["two_way_s"] >= 0.75 * p["span_s"], p
    assert min(kept.values()) >= 0.6, (kept, p, clean)
    # Both ways alike: the same loss each way, and the relay must not throttle one of them
    # (0.67 and falling in relay mode before, ~0.95 since, as in direct mode; with four more
    # busy processes on the host the relay's side, in this process, dipped to 0.75-0.81, so
    # 0.7: the falling case is the 0.6 floor's)
    assert min(kept.values()) >= 0.7 * max(kept.values()), (kept, p, clean)


THIN_SETTLE_S = 10.0  # the senders find the thin link (the kiosk's limit settles in ~8 s)
THIN_S = 8.0


@pytest.mark.timeout(120)
async def test_a_thin_link_in_relay_mode_carries_both_pictures(sqlite_template: Path,
                                                               tmp_path: Path) -> None:
    """300 kbit/s + 80 ms each way, below what the camera sends, in relay mode: the family's
    browser fits its own picture to the link from the relay's transport-wide feedback
    (signalling/transport_cc.py), and the kiosk's is held to the family's link by the relay's
    estimate of it. Without the feedback the family's picture reached the kiosk at 0.3-1.2
    frames a second in the benchmark (docs/BENCHMARKS.md, "Links"). The relay's answer must
    take the feedback (the family's browser sends the sequence numbers and reads it; what it
    sends is tests/unit/test_transport_cc.py's), and once the senders have settled both
    pictures must move together half the time (0.77-0.97 with the feedback alone, 0.64
    in a full run on two cores) and each keep a quarter of the frame rate the same call
    had on the clean link (the family's: 0.7-0.74 alone, 0.26 in that full run; the kiosk's,
    fitted by the relay's loss-based estimate, 0.4-0.5). The pictures alone do not tell the
    feedback's absence at these floors every time (two runs without it: two-way 0.72 and 0,
    the family's picture 0.39 and 0); the answer does."""
    clean, p, kept, answer = await _clean_then(tmp_path, sqlite_template, 23, True,
                                       {"delay_ms": 80, "rate_kbit": 300}, THIN_SETTLE_S, THIN_S)
    print(f"\nthin relay: {', '.join(f'{k} {v:.1f}' for k, v in p.items())}; clean fps "
          f"{clean['fps_family']:.1f}/{clean['fps_kiosk']:.1f}")
    assert min(clean["fps_family"], clean["fps_kiosk"]) >= 5, clean
    assert URI in answer and "transport-cc" in answer, "the relay's answer takes no feedback"
    # half: 0.64 in a full run of the suite on two cores (0.77-0.97 alone)
    assert p["two_way_s"] >= 0.5 * p["span_s"], p
    assert kept["kiosk"] >= 0.25, ("the family's own picture", kept, p, clean)
    assert kept["family"] >= 0.25, ("the kiosk's picture", kept, p, clean)
    assert p["billed_s"] <= p["span_s"] - p["unbillable_s"] + 2 * SAMPLE_S + 0.2, p
