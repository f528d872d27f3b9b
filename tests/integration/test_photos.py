"""Photo intake through the real upload path: limits, content sniffing, metadata removal,
who may see a photo, and photo messages held, approved and refunded."""

from __future__ import annotations

import io
import os
import struct
import zlib

import aiohttp
from PIL import Image

from tests.conftest import app_client
from tests.support.cast import balance, cast, send
from tests.support.helpers import Api, Who


def jpeg_with_gps(size=(640, 480)) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x010E] = "secret description"  # ImageDescription
    exif[0x8825] = {1: "N", 2: (40.0, 26.0, 46.0), 3: "W", 4: (79.0, 58.0, 56.0)}  # GPS
    exif[0x0112] = 6  # Orientation: rotate 90 to view
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, comment=b"shot on a phone")
    return out.getvalue()


def png(size=(300, 200), mode="RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 200, 10, 128) if mode == "RGBA" else 100).save(out, "PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge image but carries almost no data: a decompression bomb's
    header. It must be refused from the header, before any decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


async def upload(api: Api, who: Who, data: bytes, filename: str = "p.jpg",
                 content_type: str = "image/jpeg"):
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(data), filename=filename, content_type=content_type)
    return await api.call("POST", "/photos", who, data=form)


async def fetch(api: Api, who: Who, photo_id: str, thumb: bool = False):
    headers = {"Authorization": f"Bearer {who.token}"}
    path = f"/api/v1/photos/{photo_id}" + ("/thumb" if thumb else "")
    async with api.client.get(path, headers=headers) as r:
        return r.status, await r.read()


async def test_metadata_is_stripped_and_the_photo_turned_upright(api: Api) -> None:
    fam = await api.family()
    r = await upload(api, fam, jpeg_with_gps())
    assert r.status == 201, r.body
    status, data = await fetch(api, fam, r.body["photo_id"])
    assert status == 200
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (480, 640), "EXIF orientation applied, then dropped"
        assert not image.getexif(), "no EXIF survives"
        assert "comment" not in image.info and "icc_profile" not in image.info
    assert b"secret description" not in data and b"phone" not in data
    status, thumb = await fetch(api, fam, r.body["photo_id"], thumb=True)
    with Image.open(io.BytesIO(thumb)) as image:
        assert max(image.size) <= 320


async def test_png_with_alpha_is_accepted_and_flattened(api: Api) -> None:
    fam = await api.family()
    r = await upload(api, fam, png(), "x.png", "image/png")
    assert r.status == 201, r.body
    _, data = await fetch(api, fam, r.body["photo_id"])
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB" and image.size == (300, 200)


async def test_content_decides_not_the_name(api: Api) -> None:
    fam = await api.family()
    r = await upload(api, fam, b"GIF89a" + b"\x00" * 100, "cat.jpg", "image/jpeg")
    assert r.status == 415 and r.code == "unsupported_media_type"
    r = await upload(api, fam, b"<?php echo 1; ?>" * 10, "x.png", "image/png")
    assert r.status == 415
    truncated = jpeg_with_gps()[:200]
    r = await upload(api, fam, truncated)
    assert r.status == 415 and r.code == "invalid_image"


async def test_pixel_bomb_is_refused_before_decoding(api: Api) -> None:
    fam = await api.family()
    r = await upload(api, fam, png_header_only(60_000, 60_000), "bomb.png", "image/png")
    assert r.status == 413 and r.code == "too_many_pixels"


async def test_size_limit_stops_reading(db_url: str, tmp_path) -> None:

    async with app_client(db_url, tmp_path, photo_bytes_max=50_000) as client:
        api = Api(client)
        fam = await api.family()
        noisy = Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3))
        out = io.BytesIO()
        noisy.save(out, "PNG")
        assert len(out.getvalue()) > 50_000
        r = await upload(api, fam, out.getvalue(), "big.png", "image/png")
        assert r.status == 413 and r.code == "too_large"


async def test_upload_rate_is_limited(db_url: str, tmp_path) -> None:

    async with app_client(db_url, tmp_path, photo_uploads_per_hour_max=2) as client:
        api = Api(client)
        fam = await api.family()
        small = png((20, 20), "L")
        assert [(await upload(api, fam, small, "a.png")).status for _ in range(3)] == \
            [201, 201, 429]


async def test_photo_messages_are_held_visible_to_the_right_people_and_refunded(
        api: Api) -> None:
    c = await cast(api, credits=500)
    photo_id = (await upload(api, c.family, jpeg_with_gps())).body["photo_id"]
    stranger = await api.family("Stranger")
    assert (await fetch(api, stranger, photo_id))[0] == 404
    assert (await fetch(api, c.person, photo_id))[0] == 404, "not sent yet"
    r = await send(api, c.family, c.person, "look", photo_ids=[photo_id])
    assert r.status == 201, r.body
    assert r.body["message"]["price"] == 150 and r.body["message"]["status"] == "held"
    assert await balance(api, c.family) == 350
    assert (await send(api, c.family, c.person, "again", photo_ids=[photo_id])).code == \
        "invalid_photo", "a photo is sent once"
    assert (await fetch(api, c.person, photo_id))[0] == 404, "held: not visible yet"
    assert (await fetch(api, c.staff, photo_id))[0] == 200, "staff review it"
    other_staff = await api.staff(c.admin, await api.facility(c.admin))
    assert (await fetch(api, other_staff, photo_id))[0] == 404
    message_id = r.body["message"]["id"]
    rej = await api.call("POST", f"/review/{message_id}/reject", c.staff,
                         json={"reason": "Shows a weapon"})
    assert rej.status == 200
    assert await balance(api, c.family) == 500, "50 + 100 came back"
    assert (await fetch(api, c.person, photo_id))[0] == 404
    sent = (await api.call("GET", "/messages?folder=sent", c.family)).body["messages"]
    assert sent[0]["status"] == "rejected" and sent[0]["reject_reason"] == "Shows a weapon"


async def test_approved_photo_reaches_the_recipient(api: Api) -> None:
    c = await cast(api, credits=500)
    photo_id = (await upload(api, c.family, png((64, 64), "RGB"), "a.png")).body["photo_id"]
    r = await send(api, c.family, c.person, "", photo_ids=[photo_id])
    await api.call("POST", f"/review/{r.body['message']['id']}/approve", c.staff)
    status, data = await fetch(api, c.person, photo_id)
    assert status == 200 and data[:3] == b"\xff\xd8\xff"


async def test_svg_and_a_30_mb_upload_are_refused_with_bounded_memory(api: Api) -> None:
    import resource

    fam = await api.family()
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>x</script></svg>'
    r = await upload(api, fam, svg, "cute.svg", "image/svg+xml")
    assert r.status == 415 and r.code == "unsupported_media_type"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    huge = b"\xff\xd8\xff\xe0" + os.urandom(30 * 1024 * 1024)
    r = await upload(api, fam, huge, "huge.jpg")
    assert r.status == 413 and r.code == "too_large"
    # The client holds 30 MB (twice, in the form); the server must not add a full copy more.
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 100 * 1024, f"peak memory grew {grown_kib} KiB"
