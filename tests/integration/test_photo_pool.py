"""Photo work cannot stall logins, and the upload quota holds when uploads arrive at once
(issue 17, finding 3).

Adversary: a free family account sending cheap photos that are expensive to decode (a small
PNG declaring 6300x6300, 40 MP: under the old cap), six at once, while someone else logs in;
the same six from six accounts at the largest size the cap allows; uploads sent all at once
to overrun the hourly quota (the old code counted the hour's photos, did the work, and only
then wrote the row). Before the fix image work and argon2 shared the default thread pool and
a login waited behind the decodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from pathlib import Path

import pytest
from aiohttp import FormData
from PIL import Image

from tests.conftest import app_client
from tests.support.helpers import Api, Reply, Who
from tests.support.nodes import RedisServer

# Real argon2id at OWASP's minimum (19 MiB, 2 passes): the login below does real work.
REAL_HASH = {"argon2_time_cost": 2, "argon2_memory_kib": 19_456}


def gradient_png(width: int, height: int, mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert(mode).save(out, "PNG")
    return out.getvalue()


async def upload(api: Api, who: Who, data: bytes) -> Reply:
    form = FormData()
    form.add_field("file", data, filename="p.png", content_type="image/png")
    return await api.call("POST", "/photos", who, data=form)


async def timed_login(api: Api, email: str) -> float:
    started = time.perf_counter()
    r = await api.call("POST", "/auth/login", json={"email": email, "password": "correct horse"})
    assert r.status == 200, r
    return time.perf_counter() - started


async def test_six_forty_megapixel_photos_do_not_stall_a_login(db_url: str,
                                                                 tmp_path: Path) -> None:
    bomb = await asyncio.to_thread(gradient_png, 6300, 6300)
    assert len(bomb) < 200_000  # cheap to send
    async with app_client(db_url, tmp_path, **REAL_HASH) as client:
        api = Api(client)
        attacker, victim = await api.family("Attacker"), await api.family("Victim")
        uploads = [asyncio.create_task(upload(api, attacker, bomb)) for _ in range(6)]
        await asyncio.sleep(0.05)  # the uploads are in
        took = await timed_login(api, victim.account["email"])
        replies = await asyncio.gather(*uploads)
    assert took < 1.0, f"a login took {took:.2f} s behind the photos"
    # 40 MP is past the cap: refused from the header, or while another of theirs is in flight.
    assert {(r.status, r.code) for r in replies} <= {(413, "too_many_pixels"),
                                                     (429, "upload_in_progress")}, replies


async def test_photos_at_the_cap_from_six_accounts_leave_logins_fast(db_url: str,
                                                                    tmp_path: Path) -> None:
    async with app_client(db_url, tmp_path, **REAL_HASH) as client:
        api = Api(client)
        cap = api.ctx.settings.photo_pixels_max
        width = 4096
        largest = await asyncio.to_thread(gradient_png, width, cap // width)
        senders = [await api.family(f"Sender{i}") for i in range(6)]
        victim = await api.family("Victim")
        started = time.perf_counter()
        uploads = [asyncio.create_task(upload(api, who, largest)) for who in senders]
        await asyncio.sleep(0.05)
        took = await timed_login(api, victim.account["email"])
        replies = await asyncio.gather(*uploads)
        decoding = time.perf_counter() - started
    assert took < 1.0, f"a login took {took:.2f} s behind the photos"
    statuses = sorted(r.status for r in replies)
    # One photo thread and four waiting: the sixth is refused at once, not queued.
    assert statuses.count(201) >= 1 and set(statuses) <= {201, 503}, replies
    assert all(r.code == "busy" for r in replies if r.status == 503), replies
    print(f"login {took:.3f} s while {statuses.count(201)} photos took {decoding:.2f} s")


@pytest.mark.parametrize("counters", ["store", "redis"])
async def test_uploads_sent_at_once_hold_the_hourly_quota(db_url: str, tmp_path: Path,
                                                         counters: str) -> None:
    small = gradient_png(40, 40, "RGB")
    async with contextlib.AsyncExitStack() as stack:
        extra = {}
        if counters == "redis":  # where Redis is configured, the counters live there
            redis = RedisServer(tmp_path)
            await redis.start()
            stack.callback(redis.stop)
            extra["redis_url"] = redis.url
        client = await stack.enter_async_context(
            app_client(db_url, tmp_path, photo_uploads_per_hour_max=3, **extra))
        api = Api(client)
        fam = await api.family()

        async def persistent() -> Reply:  # sends again while another of its uploads runs
            while True:
                r = await upload(api, fam, small)
                if r.code != "upload_in_progress":
                    return r
                await asyncio.sleep(0.002)

        replies = await asyncio.gather(*(persistent() for _ in range(10)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [201] * 3 + [429] * 7, statuses
    assert all(r.code == "too_many_uploads" for r in replies if r.status == 429), replies


async def test_one_upload_at_a_time_per_user(db_url: str, tmp_path: Path) -> None:
    photo = await asyncio.to_thread(gradient_png, 3000, 3000)
    async with app_client(db_url, tmp_path) as client:
        api = Api(client)
        fam, other = await api.family(), await api.family()
        replies = await asyncio.gather(*(upload(api, fam, photo) for _ in range(4)),
                                       upload(api, other, photo))
    codes = [r.code for r in replies[:4]]
    assert codes.count("upload_in_progress") >= 1 and set(codes) <= {None,
                                                                     "upload_in_progress"}, codes
    assert replies[4].status == 201, replies[4]  # someone else's upload is not held up
