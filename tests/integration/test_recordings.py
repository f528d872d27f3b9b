"""Recordings as records: keeping a finished file as a `recordings` row (server/recordings.py),
retention, and playback over HTTP with ranges and an audit entry per request
(server/http/routes_recordings.py). The blob-store contract is in tests/integration/test_blobs.py;
who may call
the routes at all in tests/integration/test_roles.py.

Adversaries: two processes expiring the same recordings at once; a process killed between
deleting a blob and its row; a staff member of another facility guessing a recording id; a
client asking for a range outside the file; a clock moved past the retention deadline.
"""

from __future__ import annotations

import asyncio
import fractions
import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import av
from sqlalchemy import select

from server.schema import audit_log, recordings, visits
from store.ids import new_id
from tests.conftest import app_client
from tests.support.clock import Clock
from tests.support.helpers import Api, Who

START = datetime(2027, 3, 1, 18, 0, tzinfo=UTC)


def webm(path: Path, seconds: float = 2.0) -> Path:
    """A small real WebM (VP8 at 10 frames/s) of about `seconds`."""
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 10)
        for n in range(round(seconds * 10)):
            frame = av.VideoFrame(64, 48, "yuv420p")
            frame.pts, frame.time_base = n, fractions.Fraction(1, 10)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


# --- records, retention, playback -----------------------------------------------------------

async def relayed_visit(api: Api, admin: Who, facility_id: str) -> Any:
    """A relay-mode visit row of a new family and person of the facility (written straight to
    the store: what matters here is what the relay keeps of it)."""
    staff = await api.staff(admin, facility_id)
    family, person = await api.family(), await api.person(staff, facility_id)
    await api.connect(family, person)
    ctx = api.ctx
    async with ctx.store.write() as conn:
        from server.schema import connections

        connection_id = (await conn.execute(select(connections.c.id).where(
            connections.c.family_id == family.id))).scalar_one()
        visit_id = new_id("vis")
        now = ctx.clock()
        await conn.execute(visits.insert().values(
            id=visit_id, facility_id=facility_id, connection_id=connection_id,
            family_id=family.id, person_id=person.id, booked_by=family.id,
            start_at=now - timedelta(minutes=30), end_at=now, blocks=1, minute_price=50,
            media="relay", record=True, status="ended", created_at=now, updated_at=now))
        return (await conn.execute(select(visits).where(visits.c.id == visit_id))).one()


async def audit_entries(api: Api, action: str) -> list[Any]:
    async with api.ctx.store.read() as conn:
        return (await conn.execute(select(audit_log).where(audit_log.c.action == action)
                                   .order_by(audit_log.c.seq))).all()


async def test_a_kept_recording_is_listed_played_by_range_and_audited(
        db_url: str, tmp_path: Path) -> None:
    clock = Clock(START)
    async with app_client(db_url, tmp_path, clock=clock) as client:
        api = Api(client)
        admin = await api.admin()
        here, there = await api.facility(admin), await api.facility(admin)
        staff, other_staff = await api.staff(admin, here), await api.staff(admin, there)
        visit = await relayed_visit(api, admin, here)
        source = webm(tmp_path / "scratch.webm", 3.0)
        data = await asyncio.to_thread(read_bytes, source)
        kept = await api.ctx.recordings.keep(visit, source)
        assert not source.exists()
        listed = (await api.call("GET", "/recordings", staff)).body["recordings"]
        assert [r["id"] for r in listed] == [kept["id"]]
        record = listed[0]
        assert record["visit_id"] == visit.id and record["segment"] == 1
        assert (record["family_id"], record["person_id"]) == (visit.family_id, visit.person_id)
        assert record["bytes"] == len(data)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        assert abs(record["duration_s"] - 3.0) <= 0.15
        assert record["ended_at"] == START.isoformat()
        assert record["retain_until"] == (START + timedelta(days=90)).isoformat()
        assert (await api.call("GET", "/recordings", other_staff)).body["recordings"] == []
        assert (await api.call("GET", f"/recordings?facility_id={there}", admin)
                ).body["recordings"] == []
        path = f"/api/v1/recordings/{kept['id']}/media"
        for who, status in ((other_staff, 404), (admin, 200)):
            async with client.get(path, headers={"Authorization": f"Bearer {who.token}"}) as r:
                assert r.status == status
        headers = {"Authorization": f"Bearer {staff.token}"}
        async with client.get(path, headers=headers) as r:
            assert r.status == 200 and r.content_type == "video/webm"
            assert r.headers["Accept-Ranges"] == "bytes"
            assert await r.read() == data
        async with client.get(path, headers={**headers, "Range": "bytes=100-1099"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
            assert await r.read() == data[100:1100]
        async with client.get(path, headers={**headers, "Range": "bytes=-500"}) as r:
            assert r.status == 206 and await r.read() == data[-500:]
        async with client.get(path, headers={**headers, "Range": "bytes=1000-"}) as r:
            assert r.status == 206 and await r.read() == data[1000:]
        async with client.get(path, headers={**headers,
                                             "Range": f"bytes={len(data)}-"}) as r:
            assert r.status == 416
        played = await audit_entries(api, "recording.play")
        # Every request that got bytes, in order: admin's, then the staff member's four.
        assert [(e.actor_id, e.details["range"]) for e in played] == [
            (admin.id, [0, len(data)]), (staff.id, [0, len(data)]), (staff.id, [100, 1100]),
            (staff.id, [len(data) - 500, len(data)]), (staff.id, [1000, len(data)])]
        assert all(e.target == kept["id"] and e.facility_id == here for e in played)


async def test_retention_deletes_expired_recordings_once_and_says_so(
        db_url: str, tmp_path: Path) -> None:
    clock = Clock(START)
    async with app_client(db_url, tmp_path, clock=clock) as client:
        api = Api(client)
        admin = await api.admin()
        short, long = await api.facility(admin, recording_retention_days=1), \
            await api.facility(admin)
        recorder = api.ctx.recordings
        kept = []
        for n in range(3):
            visit = await relayed_visit(api, admin, short)
            kept.append(await recorder.keep(visit, webm(tmp_path / f"s{n}.webm", 1.0)))
        lasting = await recorder.keep(await relayed_visit(api, admin, long),
                                      webm(tmp_path / "l.webm", 1.0))
        assert await recorder.expire(START + timedelta(hours=23, minutes=59)) == 0
        # Two processes' sweepers at the same moment, just past the deadline.
        due = START + timedelta(days=1)
        counts = await asyncio.gather(recorder.expire(due), recorder.expire(due))
        assert sum(counts) == 3
        async with api.ctx.store.read() as conn:
            left = (await conn.execute(select(recordings.c.id))).scalars().all()
        assert left == [lasting["id"]]
        for record in kept:
            assert await recorder.blobs.size(record["location"]) is None
        assert await recorder.blobs.size(lasting["location"]) is not None
        expired = await audit_entries(api, "recording.expired")
        assert sorted(e.target for e in expired) == sorted(r["id"] for r in kept)
        assert all(e.actor_role == "system" and e.facility_id == short for e in expired)
        assert {e.details["sha256"] for e in expired} == {r["sha256"] for r in kept}


async def test_a_row_left_by_a_crash_after_its_blob_was_deleted_is_expired_next_time(
        db_url: str, tmp_path: Path) -> None:
    clock = Clock(START)
    async with app_client(db_url, tmp_path, clock=clock) as client:
        api = Api(client)
        admin = await api.admin()
        facility = await api.facility(admin, recording_retention_days=1)
        recorder = api.ctx.recordings
        record = await recorder.keep(await relayed_visit(api, admin, facility),
                                     webm(tmp_path / "x.webm", 1.0))
        await recorder.blobs.delete(record["location"])  # killed right after this
        assert await recorder.expire(START + timedelta(days=2)) == 1
        assert [e.target for e in await audit_entries(api, "recording.expired")] == \
            [record["id"]]


async def test_two_files_of_one_visit_are_one_record_in_two_segments(
        db_url: str, tmp_path: Path) -> None:
    """Adversary: two processes keep a file of the same visit at the same moment (the relay
    moved, and the new one salvaged the dead one's file while the visit was ending): one
    record, two segments, each with its own checksum, each played on its own, both deleted
    by retention."""
    clock = Clock(START)
    async with app_client(db_url, tmp_path, clock=clock) as client:
        api = Api(client)
        admin = await api.admin()
        here = await api.facility(admin)
        staff = await api.staff(admin, here)
        visit = await relayed_visit(api, admin, here)
        first, second = webm(tmp_path / "a.webm", 2.0), webm(tmp_path / "b.webm", 1.0)
        data = [await asyncio.to_thread(read_bytes, p) for p in (first, second)]
        recorder = api.ctx.recordings
        await asyncio.gather(recorder.keep(visit, first, START - timedelta(seconds=30)),
                             recorder.keep(visit, second))
        listed = (await api.call("GET", "/recordings", staff)).body["recordings"]
        assert len(listed) == 1, listed
        record = listed[0]
        assert record["segment"] == 2 and record["bytes"] == sum(map(len, data))
        assert abs(record["duration_s"] - 3.0) <= 0.3
        shown = (await api.call("GET", f"/recordings/{record['id']}", staff)).body["recording"]
        segments = shown["segments"]
        assert [s["segment"] for s in segments] == [1, 2]
        assert sorted(s["sha256"] for s in segments) == sorted(
            hashlib.sha256(d).hexdigest() for d in data)
        headers = {"Authorization": f"Bearer {staff.token}"}
        for segment in segments:
            path = f"/api/v1/recordings/{record['id']}/media?segment={segment['segment']}"
            async with client.get(path, headers=headers) as r:
                assert r.status == 200
                assert hashlib.sha256(await r.read()).hexdigest() == segment["sha256"]
        async with client.get(f"/api/v1/recordings/{record['id']}/media?segment=3",
                              headers=headers) as r:
            assert r.status == 404
        async with api.ctx.store.read() as conn:
            from server.schema import recording_segments

            keys = (await conn.execute(select(recording_segments.c.location))).scalars().all()
        assert len(keys) == 2
        assert await recorder.expire(START + timedelta(days=91)) == 1
        for key in keys:
            assert await recorder.blobs.size(key) is None
        async with api.ctx.store.read() as conn:
            assert (await conn.execute(select(recording_segments))).all() == []
        expired = await audit_entries(api, "recording.expired")
        assert [(e.target, e.details["segments"]) for e in expired] == [(record["id"], 2)]


def test_two_salvagers_of_one_dead_relay_s_file_make_one_file_and_leave_nothing(
        tmp_path: Path) -> None:
    """A relay's `.part` left by its death, found at once by two relays taking the visit over
    (a drain's handover beside a takeover, two processes on one shared folder): one salvages
    it, the other gets None; no second salvaged file, no claimed leftover (a full run once
    left a `.salvaged.webm` behind: both had written it). Then a file with nothing readable
    in it goes back to its `.part` name for the orphan sweep."""
    from signalling import remux

    for round_ in range(5):  # the race is real threads: several tries
        folder = tmp_path / f"round-{round_}"
        folder.mkdir()
        part = webm(folder / "vis_dead.webm.part")
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(remux.salvage, [part] * 3))
        kept = [r for r in results if r is not None]
        assert len(kept) == 1, results
        assert sorted(p.name for p in folder.iterdir()) == ["vis_dead.salvaged.webm"]
        with av.open(str(kept[0])) as container:
            assert sum(1 for _ in container.demux(video=0)) >= 15
    junk = write(tmp_path / "vis_junk.webm.part", b"not a recording")
    assert remux.salvage(junk) is None
    assert sorted(p.name for p in tmp_path.glob("vis_junk*")) == ["vis_junk.webm.part"]
