"""Photos and recordings on S3 (a private SeaweedFS): any process serves any of them.

Two app processes (A and B, each an in-process app with its own data dir) share one database
and one bucket. Adversaries: a client of process B asking for a photo it may not see (another
family, or another resident, guessing the id; a photo still held for review), and a deployment
that still keeps files on one host's disk (the folder store: B answers 404, which is what S3
fixes).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from botocore.session import get_session

from tests.conftest import app_client
from tests.integration.test_kiosk_detail import _status
from tests.integration.test_photos import fetch, jpeg_with_gps, png, upload
from tests.integration.test_recordings import START, read_bytes, relayed_visit, webm
from tests.support.cast import cast, send
from tests.support.clock import Clock
from tests.support.helpers import Api
from tests.support.processes import cli_env, free_port, wait_ready
from tests.support.seaweed import BUCKET, Seaweed

pytestmark = pytest.mark.timeout(180)


def s3_settings(s3: Seaweed, prefix: str) -> dict[str, str]:
    return {"blob_url": f"s3://{BUCKET}/{prefix}", "s3_endpoint_url": s3.endpoint,
            "s3_region": "us-east-1", "s3_access_key_id": s3.access_key_id,
            "s3_secret_access_key": s3.secret_access_key}


def bucket_keys(s3: Seaweed, prefix: str) -> list[str]:
    client = get_session().create_client(
        "s3", endpoint_url=s3.endpoint, region_name="us-east-1",
        aws_access_key_id=s3.access_key_id, aws_secret_access_key=s3.secret_access_key)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def local_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith("kinwire")]


@pytest.mark.parametrize("on_s3", [True, False], ids=["s3", "folders"])
async def test_a_photo_uploaded_through_one_process_is_served_by_another(
        db_url: str, tmp_path: Path, request: pytest.FixtureRequest, on_s3: bool) -> None:
    prefix = f"p-{secrets.token_hex(4)}"
    extra = s3_settings(request.getfixturevalue("seaweed"), prefix) if on_s3 else {}
    async with app_client(db_url, tmp_path / "a", **extra) as a, \
            app_client(db_url, tmp_path / "b", **extra) as b:
        api_a, api_b = Api(a), Api(b)
        family, stranger = await api_a.family(), await api_a.family("Other")
        r = await upload(api_a, family, jpeg_with_gps())
        assert r.status == 201, r.body
        photo_id = r.body["photo_id"]
        status, body = await fetch(api_a, family, photo_id)
        assert status == 200
        served_by_b = await fetch(api_b, family, photo_id)
        thumb_by_b = await fetch(api_b, family, photo_id, thumb=True)
        if not on_s3:  # one host's disk: process B has no such file
            assert served_by_b[0] == 404 and thumb_by_b[0] == 404
            return
        assert served_by_b == (200, body)
        assert thumb_by_b[0] == 200 and thumb_by_b[1][:3] == b"\xff\xd8\xff"
        assert (await fetch(api_b, stranger, photo_id))[0] == 404  # same authorisation
        async with b.get(f"/api/v1/photos/{photo_id}",
                         headers={"Authorization": f"Bearer {family.token}"}) as resp:
            assert resp.headers["Cache-Control"] == "private, max-age=3600"
        assert bucket_keys(request.getfixturevalue("seaweed"), prefix) == [
            f"{prefix}/photos/{photo_id}.jpg", f"{prefix}/photos/{photo_id}.thumb.jpg"]
        assert local_files(tmp_path / "a" / "blobs") == [], "no copy left on A's disk"


async def test_recordings_land_in_s3_and_another_process_plays_them(
        db_url: str, tmp_path: Path, seaweed: Seaweed) -> None:
    prefix = f"r-{secrets.token_hex(4)}"
    extra = s3_settings(seaweed, prefix)
    async with app_client(db_url, tmp_path / "a", clock=Clock(START), **extra) as a, \
            app_client(db_url, tmp_path / "b", clock=Clock(START), **extra) as b:
        api_a = Api(a)
        admin = await api_a.admin()
        here = await api_a.facility(admin)
        staff = await api_a.staff(admin, here)
        visit = await relayed_visit(api_a, admin, here)
        source = webm(tmp_path / "scratch.webm", 2.0)
        data = await asyncio.to_thread(read_bytes, source)
        kept = await api_a.ctx.recordings.keep(visit, source)
        assert bucket_keys(seaweed, prefix) == [f"{prefix}/recordings/{kept['location']}"]
        path = f"/api/v1/recordings/{kept['id']}/media"
        headers = {"Authorization": f"Bearer {staff.token}"}
        async with b.get(path, headers=headers) as r:
            assert r.status == 200 and await r.read() == data
        async with b.get(path, headers={**headers, "Range": "bytes=100-1099"}) as r:
            assert r.status == 206 and await r.read() == data[100:1100]
        assert await api_a.ctx.recordings.expire(START + timedelta(days=91)) == 1
        assert bucket_keys(seaweed, prefix) == []


async def test_a_persons_photo_from_another_process_keeps_its_rules(
        db_url: str, tmp_path: Path, seaweed: Seaweed) -> None:
    """The kiosk rules (tests/integration/test_kiosk_detail.py) hold when process B serves what A
    stored:
    the approved photo with `no-store`, the held one and another resident's request 404."""
    extra = s3_settings(seaweed, f"k-{secrets.token_hex(4)}")
    async with app_client(db_url, tmp_path / "a", **extra) as a, \
            app_client(db_url, tmp_path / "b", **extra) as b:
        api_a, api_b = Api(a), Api(b)
        c = await cast(api_a, credits=1000)  # photos are held for review by default
        ids = []
        for _ in range(2):
            photo = (await upload(api_a, c.family, png((64, 48), "RGB"), "p.png")
                     ).body["photo_id"]
            sent = await send(api_a, c.family, c.person, "look", photo_ids=[photo])
            ids.append((photo, sent.body["message"]["id"]))
        (approved, approved_msg), (held, _) = ids
        await api_a.call("POST", f"/review/{approved_msg}/approve", c.staff)
        other = await api_a.person(c.staff, c.facility)
        for suffix in ("", "/thumb"):
            assert await _status(api_b, c.person, f"/api/v1/photos/{approved}{suffix}") == \
                (200, "private, no-store")
            assert (await _status(api_b, c.person, f"/api/v1/photos/{held}{suffix}"))[0] == 404
            assert (await _status(api_b, other, f"/api/v1/photos/{approved}{suffix}"))[0] == 404


async def test_two_real_serve_processes_with_their_own_data_dirs_share_photos(
        tmp_path: Path, seaweed: Seaweed) -> None:
    """The same as operators run it: two `kinwire serve` processes, one database file, each
    its own data dir (another host's disk), one bucket."""
    s3 = {f"KINWIRE_{k.upper()}": v
          for k, v in s3_settings(seaweed, f"serve-{secrets.token_hex(4)}").items()}
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    procs, bases = [], []
    try:
        for name in ("a", "b"):  # one after the other: the first applies the migrations
            port = free_port()
            env = cli_env(tmp_path / name, DATABASE_URL=database, **s3)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "server", "serve", "--port", str(port)], env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            bases.append(f"http://127.0.0.1:{port}")
            await wait_ready(bases[-1], procs[-1])
        async with aiohttp.ClientSession() as http:
            body = {"email": "f@example.test", "password": "a long password", "name": "F"}
            async with http.post(bases[0] + "/api/v1/auth/signup", json=body) as r:
                assert r.status == 201
            async with http.post(bases[0] + "/api/v1/auth/login", json={
                    "email": body["email"], "password": body["password"]}) as r:
                token = (await r.json())["token"]
            auth = {"Authorization": f"Bearer {token}"}
            form = aiohttp.FormData()
            form.add_field("file", jpeg_with_gps(), filename="p.jpg", content_type="image/jpeg")
            async with http.post(bases[0] + "/api/v1/photos", data=form, headers=auth) as r:
                assert r.status == 201, await r.text()
                photo_id = (await r.json())["photo_id"]
            served = []
            for base in bases:
                async with http.get(f"{base}/api/v1/photos/{photo_id}", headers=auth) as r:
                    served.append((r.status, await r.read()))
        assert served[1] == served[0] and served[0][0] == 200
        assert local_files(tmp_path / "a" / "data" / "blobs") == [], "not on A's disk"
    finally:
        for proc in procs:
            proc.terminate()
            proc.communicate(timeout=30)  # waits, and closes its output pipe


async def test_a_stalled_or_cut_store_is_503_in_bounded_time_then_serves_again(
        tmp_path: Path, seaweed: Seaweed, sqlite_template: Path) -> None:
    """Adversary: the object store stalls (bytes stop moving, connections stay open), then
    drops every connection. A photo request must answer 503 `unavailable` within the S3
    timeout and its retries (never hang, never a 404 as if the photo were gone), and the same
    request succeed once the store is back."""
    from tests.conftest import fresh_sqlite
    from tests.support.faultproxy import FaultProxy

    host, port = seaweed.endpoint.removeprefix("http://").split(":")
    proxy = await FaultProxy(host, int(port)).start()
    extra = {**s3_settings(seaweed, f"f-{secrets.token_hex(4)}"),
             "s3_endpoint_url": f"http://127.0.0.1:{proxy.port}", "s3_timeout_s": 1.0}
    try:
        async with app_client(fresh_sqlite(sqlite_template, tmp_path), tmp_path, **extra) as a:
            api = Api(a)
            family = await api.family()
            photo_id = (await upload(api, family, jpeg_with_gps())).body["photo_id"]
            assert (await fetch(api, family, photo_id))[0] == 200
            for fault in (proxy.stall, lambda: proxy.cut(refuse_s=30)):
                fault()
                started = asyncio.get_running_loop().time()
                r = await api.call("GET", f"/photos/{photo_id}", family)
                took = asyncio.get_running_loop().time() - started
                assert r.status == 503 and r.body["error"]["code"] == "unavailable", r.body
                # 3 tries of 1 s and botocore's jittered back-off: 8.7 s stalled, 2.9 s cut here
                assert took < 20, f"answered after {took:.1f} s"
                proxy.heal()
                assert (await fetch(api, family, photo_id))[0] == 200
    finally:
        await proxy.close()
