"""A video visit through Janus in the browsers (issue 16 item 4; static/js/janus.js): the family
app and the kiosk app join a relay-mode visit through Kinwire (KINWIRE_MEDIA_ENGINE=janus, two
real Janus servers from deploy/janus/, Chromium with fake cameras), publish into the visit's room
and play each other's video; the staff console watches both through Janus; staff end it, and the
console plays its recording (Janus's recorder, both rooms' files muxed into one,
server/janus_recordings.py).

Two Kinwire processes on PostgreSQL and Redis: the pages' (in this process) and a `kinwire
serve` of its own, which alone receives Janus's event posts. The pages' process hears nothing
from Janus itself, so every billed minute and every live/paused state the pages show came
through the other process and the shared store and broker. (The pages share one origin, as
behind a deployment's balancer: Janus's CORS names one origin.) No TURN here: Janus's
candidates are on this machine's own address, which the tests' coturn (relaying from
127.0.0.1) did not reach even when allowed that peer.

Adversaries: kill -9 of the Janus carrying the call, with nobody telling the pages what to do
(their own requests to it fail; they join again until Kinwire places the room on the other
server): both pictures play again within 10 s of the kill. A page that would call a Janus
server other than the configured ones is refused by the Content-Security-Policy (connect-src
lists exactly the fleet).

The real clock on purpose: Janus checks its tokens' expiry on it and the visit is written as
under way now (no booking, no visiting hours), so the date and hour cannot matter."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from server.app import create_app
from server.http.janus_events import PATH
from signalling.tables import visits
from store import Store
from tests.conftest import test_settings
from tests.integration.test_janus_visits import LONG_RECORDING, RECORDED_S, janus_env
from tests.integration.test_relay import STAFF_PASSWORD, new_staff, recorded
from tests.integration.test_visit_e2e import visit_now
from tests.support.browser import KIOSK, PHONE, kiosk_sign_in, launch, require_chromium, shot
from tests.support.helpers import Api
from tests.support.janus import running_janus
from tests.support.nodes import RedisServer, cluster
from tests.support.pages import log_in, note_watch_streams, watch_plays_new_streams
from tests.support.processes import free_port
from tests.support.visit_pages import MEDIA, PIN, visit_parties

PASSWORD = "correct horse battery"
# The family's 1,500 credits last 30 minutes: 120 s at 4 s (the test takes 30-60 s; at 2 s
# they ran out once under load).
MINUTE_S = 10.0 if LONG_RECORDING else 4.0
# On both processes. A Janus server is dead for Kinwire once its liveness lease (half this)
# runs out unrenewed, so the pages are given the other server 1.5 s after the kill at the
# earliest (3 s with the default 6 s): resumed 2.4-5.9 s after the kill with three of these
# tests at once, 9 of 9; one of 6 took over 10 s with the default. (1.5 s made it worse: both
# processes' own liveness leases, 0.75 s, lapsed on the loaded cores.)
LEASE_S = 3.0
RESUME_WITHIN_S = 10.0
# The remote picture of a new media session plays: it has a size and its time moves on by half
# a second. (Janus names its tracks the same in every session: the stream tells them apart.)
PLAYING = """async () => {
  const v = document.getElementById('visit-remote');
  const track = () => v.srcObject && v.srcObject.getVideoTracks()[0];
  while (!(v.videoWidth > 0 && v.srcObject !== window.before && track()
           && track().readyState === 'live'))
    await new Promise(r => setTimeout(r, 50));
  const t0 = v.currentTime;
  while (v.currentTime < t0 + 0.5) await new Promise(r => setTimeout(r, 50));
  window.before = v.srcObject;  // the next call waits for a new session's picture
  return {width: v.videoWidth};
}"""


async def server_of(db: str, visit_id: str) -> str | None:
    store = Store(db)
    try:
        async with store.read() as conn:
            return (await conn.execute(visits.select().where(
                visits.c.id == visit_id))).one().media_server
    finally:
        await store.close()


@pytest.mark.timeout(180 + (RECORDED_S if LONG_RECORDING else 0))
async def test_a_visit_through_janus_in_the_browsers_survives_its_server(
        pg_db: str, tmp_path: Path) -> None:
    require_chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=20_000)
    port, other_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    events = f"http://127.0.0.1:{other_port}{PATH}"  # the other process only
    redis = RedisServer(tmp_path)
    await redis.start()
    try:
        async with running_janus(tmp_path / "j1", events_url=events, allow_origin=base) as first, \
                running_janus(tmp_path / "j2", events_url=events, allow_origin=base,
                              janus_secrets=first.secrets) as second, \
                cluster(pg_db, redis.url, tmp_path / "other", n=1, ports=[other_port],
                        **{**janus_env(first, second), "KINWIRE_VISIT_MINUTE_S": str(MINUTE_S),
                           "KINWIRE_METER_LEASE_S": str(LEASE_S)}):
            s = first.secrets
            db = pg_db
            settings = test_settings(
                db, tmp_path, redis_url=redis.url, visit_minute_s=MINUTE_S, meter_lease_s=LEASE_S,
                media_engine="janus",
                janus_urls=(first.api_url, second.api_url),
                janus_admin_urls=(first.admin_url, second.admin_url),
                janus_api_secret=s.api_secret, janus_admin_secret=s.admin_secret,
                janus_token_secret=s.token_secret, janus_room_admin_key=s.room_admin_key,
                janus_events_password=s.events_password,
                # one folder for the fleet's .mjr files, shared with Kinwire (same host here)
                janus_recordings_dir=str(first.recordings_dir))
            app = create_app(settings, run_migrations=False)
            by_url = {first.api_url: first, second.api_url: second}
            async with TestClient(TestServer(app, host="127.0.0.1", port=port)) as client, \
                    async_playwright() as pw:
                browser = await launch(pw, *MEDIA)
                api = Api(client)
                seed = await visit_parties(api, PASSWORD)
                assert (await api.buy(seed["family"], 1500)).status == 201
                visit_id, facility_id = await visit_now(db, seed["family"].id, media="relay",
                                                        record=True)
                staff_email = await new_staff(db, facility_id, "Officer Reyes")
                contexts = [await browser.new_context(viewport=size)
                            for size in (PHONE, KIOSK, {"width": 1024, "height": 900})]
                errors: list[str] = []
                try:
                    fam, kiosk, desk = [await c.new_page() for c in contexts]
                    for page in (fam, kiosk, desk):
                        page.on("pageerror", lambda e: errors.append(str(e)))
                    # The pages may call the fleet's client API and nothing else outside.
                    r = await client.get("/")
                    policy = r.headers["Content-Security-Policy"]
                    fleet = f"http://127.0.0.1:{first.http_port} http://127.0.0.1:{second.http_port}"
                    assert f"connect-src 'self' {fleet};" in policy, policy

                    await kiosk_sign_in(kiosk, base, seed, PIN)
                    await log_in(fam, base, seed["email"], PASSWORD)
                    await kiosk.get_by_role("button", name=re.compile(
                        "^Join the visit with Alex Rivers")).click()
                    await fam.get_by_role("tab", name="Visits").click()
                    await fam.get_by_role("button", name=re.compile(
                        "^Join the visit with Dana Rivers")).click()

                    # --- each side plays the other's video, through Janus ---
                    for page in (fam, kiosk):
                        played = await asyncio.wait_for(page.evaluate(PLAYING), 30)
                        assert played["width"] > 0, played
                        assert await page.evaluate("() => !window.kinwireVisit.pc "
                                                   "&& window.kinwireVisit.janus !== null")

                        # billed from Janus's events, not from the page
                        await expect(page.locator("#visit-paid")).not_to_have_text("0")
                    placed = by_url[await server_of(db, visit_id)]
                    await shot(fam, "family-visit-janus")

                    # --- staff watch both parties through Janus ---
                    await log_in(desk, base, staff_email, STAFF_PASSWORD, "/static/staff.html")
                    item = desk.locator(f"#visit-list li[data-visit='{visit_id}']")
                    await expect(item).to_have_attribute("data-status", "live")
                    await item.locator("button", has_text="Watch").click()
                    await desk.wait_for_function(
                        """() => [...document.querySelectorAll('.watch video')].every(
                             v => v.videoWidth > 0 && v.currentTime > 0.5)""", timeout=20_000)

                    # --- the family's Janus session is lost and it publishes again: the console,
                    # which hears of no publishers, subscribes to the new feed by itself ---
                    await note_watch_streams(desk)
                    await fam.evaluate("() => window.kinwireVisit.janus.lose()")
                    await watch_plays_new_streams(desk, pictures=(0,))

                    # --- kill -9 of the Janus carrying the call: both pictures come back ---
                    await note_watch_streams(desk)
                    await asyncio.to_thread(placed.kill)
                    killed_at = time.monotonic()
                    for page in (fam, kiosk):
                        await asyncio.wait_for(page.evaluate(PLAYING),
                                               RESUME_WITHIN_S - (time.monotonic() - killed_at))
                    resumed_s = time.monotonic() - killed_at
                    moved = await server_of(db, visit_id)
                    assert moved != placed.api_url and moved in by_url, moved
                    print(f"both pages' video again {resumed_s:.2f} s after the kill")
                    # The console watches the new room too (it asked again, as the pages did): new
                    # streams in both pictures, playing.
                    await watch_plays_new_streams(desk)
                    await expect(desk.locator("#watch-notice")).to_have_text("Live.")
                    if LONG_RECORDING:  # KINWIRE_TEST_LONG_RECORDING=1: a 2-minute recording
                        await asyncio.sleep(RECORDED_S)

                    # --- staff end it: both pages say so ---
                    await item.locator("button", has_text="End").click()
                    await desk.get_by_role("dialog").get_by_label("Reason").fill("count time")
                    await desk.get_by_role("button", name="End visit").click()
                    for page in (fam, kiosk):
                        await expect(page.locator("#visit-ended")).to_have_attribute(
                            "data-reason", "staff_ended")

                    # --- the recording (both rooms, the gap between) plays in the console ---
                    # Kept by the ending process (Meters.on_end): the dead server's files
                    # settle (10 s unchanged), then ten files convert and mux (0.78 s on a
                    # quiet host, ~11 s from the kill in all). Not kept within 30 s once, on
                    # a host slowed by a busy loop beside the suite; 50 s stays under
                    # housekeeping's 60 s grace, so only the ending process can keep it.
                    record = await recorded(db, visit_id, timeout_s=50.0)
                    await desk.locator("#recordings-refresh").click()
                    row = desk.locator(f"#recording-list li[data-recording='{record.id}']")
                    await row.locator("button", has_text="Play").click()
                    await desk.wait_for_function(
                        """() => { const v = document.getElementById('recording-player');
                                   return v.readyState >= 2 && isFinite(v.duration)
                                          && v.videoWidth > 0; }""", timeout=20_000)
                    duration = await desk.eval_on_selector("#recording-player", "v => v.duration")
                    print(f"recording: {duration:.2f} s in Chromium, "
                          f"{record.duration_ms} ms listed")
                    assert abs(duration - record.duration_ms / 1000) <= 1.0, (duration, record)
                    assert record.duration_ms / 1000 > resumed_s, "the recording holds the call"
                    assert not LONG_RECORDING or record.duration_ms / 1000 > RECORDED_S
                    assert errors == [], errors
                finally:
                    for c in contexts:
                        await c.close()
                    await browser.close()
    finally:
        redis.stop()
