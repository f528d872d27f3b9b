"""Orphans (server/orphans.py, run by server/housekeeping.py): blobs no row references and
work-in-progress files a crash left behind are deleted once older than the grace, and each
deletion is audited.

Adversaries: a recording process killed with SIGKILL mid-file (its `.webm.part` stays under
`.partial/`); a process killed between putting a recording's blob and inserting its row (a
blob nobody references); a sweep that must not touch a recording being written right now, a
blob whose row is about to be written (younger than the grace), nor any referenced blob."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import av
from sqlalchemy import select

from server.broker.memory import MemoryBroker
from server.housekeeping import Housekeeping
from server.http.metrics import Metrics
from server.schema import audit_log
from tests.conftest import app_client
from tests.integration.test_photos import jpeg_with_gps
from tests.integration.test_recordings import START, audit_entries, relayed_visit, webm
from tests.support.clock import Clock
from tests.support.helpers import Api

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 3600

# A recording in progress, as the relay writes one (signalling/recording.py's `reserve` names
# it `<visit>.webm.part`): VP8 muxed into WebM cluster by cluster, flushed as it goes. It says
# "ready" once some clusters are on disk, then keeps writing until it is killed.
RECORDER = r"""
import fractions, os, sys
from pathlib import Path
import av, numpy
from signalling.recording import reserve
part, _ = reserve(Path(sys.argv[1]), sys.argv[2], ".webm")
out = av.open(str(part), "w", format="webm")
stream = out.add_stream("libvpx", rate=10)
stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
stream.codec_context.time_base = fractions.Fraction(1, 10)
noise = numpy.random.default_rng(1)
n, ready = 0, False
while True:
    image = noise.integers(0, 255, (240, 320, 3), dtype=numpy.uint8)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    frame.pts, frame.time_base = n, fractions.Fraction(1, 10)
    for packet in stream.encode(frame):
        out.mux(packet)
    n += 1
    if not ready and os.path.getsize(part) > 200_000:  # clusters on disk
        ready = True
        print("ready", flush=True)
"""


def age(path: Path, when) -> None:
    """Set the file's modification time to `when` (on the test's wall clock)."""
    os.utime(path, (when.timestamp(), when.timestamp()))


def machine_clock() -> Clock:
    """The machine's clock as it is now: blob and file times are stamped on it, so ages are
    measured on it; only differences from this start are used, so the date and hour the suite
    runs at cannot matter."""
    return Clock(datetime.now(UTC))


def keeper(api: Api, clock: Clock, wall: Clock, in_use=lambda path: False) -> Housekeeping:
    """A housekeeper: the app's clock stamps the audit; ages are on `wall` (machine_clock: a
    file aged GRACE_S past its start, or not)."""
    ctx = api.ctx
    return Housekeeping(ctx.store, MemoryBroker(), clock, wall=wall, node_id="n1", lease_s=3.0,
                        batch_rows=50, retention_s=86_400, metrics=Metrics(),
                        per_process=lambda now: None,
                        blobs={"recordings": ctx.blobs.recordings, "photos": ctx.blobs.photos},
                        partials=(ctx.blobs.staging, ctx.relay.recordings_dir),
                        in_use=in_use, orphan_grace_s=GRACE_S)


async def test_a_crashed_recordings_partial_file_is_swept_once_stale_and_audited(
        db_url: str, tmp_path: Path) -> None:
    clock, wall = Clock(START), machine_clock()
    # the app's own housekeeping (first pass a third of its lease in) stays out of the way
    async with app_client(db_url, tmp_path, clock=clock, housekeeping_lease_s=3600) as client:
        api = Api(client)
        await api.admin()
        partial = api.ctx.relay.recordings_dir
        recorder = subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(partial), "vis_crashed"],
            stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            line = await asyncio.wait_for(asyncio.to_thread(recorder.stdout.readline), 60)
            assert line.strip() == "ready"
        finally:
            recorder.send_signal(signal.SIGKILL)  # mid-file, at the worst moment
            recorder.wait(timeout=10)
            recorder.stdout.close()
        crashed = partial / "vis_crashed.webm.part"
        assert crashed.stat().st_size > 0
        with av.open(str(crashed)) as container:  # readable up to its last cluster
            assert sum(1 for p in container.demux() if p.size) > 0
        # a recording this process is writing now, unchanged for as long: never touched
        writing = partial / "vis_live.webm.part"
        writing.write_bytes(b"\x1a\x45\xdf\xa3")
        # one that changed within the grace (a photo being staged, say): kept
        fresh = api.ctx.blobs.staging / "pho_1.jpg.abc"
        fresh.parent.mkdir(parents=True, exist_ok=True)
        fresh.write_bytes(b"jpeg")
        for path in (crashed, writing):
            age(path, wall() - timedelta(seconds=GRACE_S + 60))
        age(fresh, wall() - timedelta(seconds=GRACE_S - 60))
        size = crashed.stat().st_size

        sweeper = keeper(api, clock, wall,
                         in_use=lambda path: path.name.startswith("vis_live"))
        await sweeper.run_pass(asyncio.Event())
        assert not crashed.exists()
        assert writing.exists() and fresh.exists()
        deleted = await audit_entries(api, "blob.partial_deleted")
        assert [(e.target, e.actor_role, e.details["bytes"]) for e in deleted] == [
            ("vis_crashed.webm.part", "system", size)]
        # the next sweep, the clock past the fresh file's grace: it goes too, once
        wall.advance(seconds=120)
        sweeper.orphans_every_s = 0
        await sweeper.run_pass(asyncio.Event())
        assert not fresh.exists() and writing.exists()
        assert [e.target for e in await audit_entries(api, "blob.partial_deleted")] == [
            "vis_crashed.webm.part", "pho_1.jpg.abc"]


async def test_blobs_no_row_references_are_deleted_after_the_grace(
        db_url: str, tmp_path: Path) -> None:
    clock, wall = Clock(START), machine_clock()
    # the app's own housekeeping (first pass a third of its lease in) stays out of the way
    async with app_client(db_url, tmp_path, clock=clock, housekeeping_lease_s=3600) as client:
        api = Api(client)
        admin = await api.admin()
        facility = await api.facility(admin)
        ctx = api.ctx
        visit = await relayed_visit(api, admin, facility)
        kept = await ctx.recordings.keep(visit, webm(tmp_path / "kept.webm", 1.0))
        # a process killed between the put and the insert: a blob with no row
        orphan_key = f"{facility}/rec_orphan.webm"
        await ctx.blobs.recordings.put(orphan_key, webm(tmp_path / "orphan.webm", 1.0))
        # one whose row is about to be written (younger than the grace)
        young_key = f"{facility}/rec_young.webm"
        await ctx.blobs.recordings.put(young_key, webm(tmp_path / "young.webm", 1.0))
        # a photo that is a message's (a row), and a pair of files with no row
        family = await api.family()
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(jpeg_with_gps()), filename="p.jpg",
                       content_type="image/jpeg")
        photo_id = (await api.call("POST", "/photos", family, data=form)).body["photo_id"]
        for name in ("pho_gone.jpg", "pho_gone.thumb.jpg"):
            (tmp_path / name).write_bytes(b"jpeg")
            await ctx.blobs.photos.put(name, tmp_path / name)
        root_r, root_p = ctx.blobs.recordings.root, ctx.blobs.photos.root
        old = wall() - timedelta(seconds=GRACE_S + 1)
        for path in (root_r / kept["location"], root_r / orphan_key, root_p / f"{photo_id}.jpg",
                     root_p / f"{photo_id}.thumb.jpg", root_p / "pho_gone.jpg",
                     root_p / "pho_gone.thumb.jpg"):
            age(path, old)
        age(root_r / young_key, wall() - timedelta(seconds=60))

        await keeper(api, clock, wall).run_pass(asyncio.Event())
        listed = {item.key async for item in ctx.blobs.recordings.listing()}
        assert listed == {kept["location"], young_key}
        listed = {item.key async for item in ctx.blobs.photos.listing()}
        assert listed == {f"{photo_id}.jpg", f"{photo_id}.thumb.jpg"}
        async with ctx.store.read() as conn:
            entries = (await conn.execute(select(audit_log).where(
                audit_log.c.action == "blob.orphan_deleted"))).all()
        assert sorted((e.target, e.details["store"], e.facility_id) for e in entries) == [
            (orphan_key, "recordings", facility), ("pho_gone.jpg", "photos", None),
            ("pho_gone.thumb.jpg", "photos", None)]
        assert all(e.actor_id == "system" for e in entries)
