"""Photo intake: limits before work, content before names, and no metadata out.

Order of checks, cheapest first: the declared length and then the bytes actually read against
photo_bytes_max (reading stops at the limit); the first bytes against the JPEG and PNG
signatures (never the file name or the part's content type); the pixel count from the header
against photo_pixels_max, before any decoding. Only then is the image decoded (off the event
loop, on the photo pool: PhotoWork), turned upright, scaled, and re-encoded as a fresh JPEG
from its pixels alone, so no EXIF, GPS, comment or colour-profile data survives. A thumbnail is
made from the same pixels. Both are kept in the blob store (server/blobs: a folder, or S3 so
that any process serves any photo) under generated names.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import Refused
from server.blobs import BlobMissing
from server.blobs.configured import Blobs

SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
THUMB_SIDE_PX = 320
READ_END = 1 << 40  # a read to the end of any photo (the store stops at the blob's end)


@dataclass(frozen=True, slots=True)
class CleanPhoto:
    full: bytes
    thumb: bytes
    width: int
    height: int


def sniff(head: bytes) -> str:
    for signature, kind in SIGNATURES.items():
        if head.startswith(signature):
            return kind
    raise Refused("unsupported_media_type", "Only JPEG and PNG photos are accepted.")


def declared_size(data: bytes, kind: str) -> tuple[int, int]:
    """Width and height as the file's header declares them, read without Pillow, so that a
    decompression bomb is refused before any library starts on it."""
    if kind == "PNG":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise Refused("invalid_image", "The photo could not be read.")
        return struct.unpack(">II", data[16:24])
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + length
    raise Refused("invalid_image", "The photo could not be read.")


def _encode(image: Image.Image) -> bytes:
    out = io.BytesIO()
    # Saved from pixels with no exif/icc arguments: nothing of the original's metadata is kept.
    image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def clean(data: bytes, *, pixels_max: int, side_px_max: int) -> CleanPhoto:
    """Validate and re-encode; CPU-bound, so callers run it in a thread."""
    kind = sniff(data[:16])
    width, height = declared_size(data, kind)
    if width < 1 or height < 1 or width * height > pixels_max:
        raise Refused("too_many_pixels",
                       f"The photo is {width}x{height}; at most {pixels_max} pixels.")
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:
            if image.size != (width, height):
                raise Refused("invalid_image", "The photo's header disagrees with itself.")
            if kind == "JPEG":  # DCT-scaled decode where the target is half the size or less
                image.draft("RGB", (side_px_max, side_px_max))
            image.load()
            upright = ImageOps.exif_transpose(image)
            upright.thumbnail((side_px_max, side_px_max))  # scale before any full-size copy
            if upright.mode in ("RGBA", "LA") or "transparency" in upright.info:
                rgba = upright.convert("RGBA")
                pixels = Image.new("RGB", rgba.size, (255, 255, 255))
                pixels.paste(rgba, mask=rgba.getchannel("A"))
            else:
                pixels = upright.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError):
        raise Refused("invalid_image", "The photo could not be read.") from None
    fresh = Image.frombytes("RGB", pixels.size, pixels.tobytes())
    thumb = fresh.copy()
    thumb.thumbnail((THUMB_SIDE_PX, THUMB_SIDE_PX))
    return CleanPhoto(_encode(fresh), _encode(thumb), fresh.width, fresh.height)


class PhotoWork:
    """The photo pool: `workers` threads of its own (never the default pool, nor the password
    pool), and at most `queue_max` photos waiting for them; more are refused 503 `busy` at
    once rather than queued without bound."""

    def __init__(self, workers: int, queue_max: int) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="photos")
        self._slots = asyncio.Semaphore(workers + queue_max)

    async def clean(self, data: bytes, *, pixels_max: int, side_px_max: int) -> CleanPhoto:
        if self._slots.locked():
            raise Refused("busy", "Photos are being processed; try again shortly.",
                           retry_after_s=2)
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(
                self._pool, partial(clean, data, pixels_max=pixels_max, side_px_max=side_px_max))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def photo_key(photo_id: str, thumb: bool = False) -> str:
    """A photo's key in the blob store: `<id>.jpg` and `<id>.thumb.jpg` (the names the photo
    folder always had, so a folder store keeps serving the photos stored before)."""
    if not photo_id.replace("_", "").isalnum():
        raise Refused("not_found", "The photo was not found.")
    return f"{photo_id}{'.thumb' if thumb else ''}.jpg"


def _stage(staging: Path, name: str, data: bytes) -> Path:
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = staging / f"{name}.{secrets.token_hex(6)}"
    path.write_bytes(data)
    return path


async def store(blobs: Blobs, photo_id: str, photo: CleanPhoto) -> None:
    """Put the photo and its thumbnail in the blob store (server/blobs), each written to the
    staging folder first, since a `put` takes a local file over."""
    for thumb, data in ((False, photo.full), (True, photo.thumb)):
        key = photo_key(photo_id, thumb)
        path = await asyncio.to_thread(_stage, blobs.staging, key, data)
        try:
            await blobs.photos.put(key, path)
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)  # gone already when put


async def load(blobs: Blobs, photo_id: str, thumb: bool = False) -> bytes:
    """The photo's bytes, from whichever process stored them (404 when there are none)."""
    try:
        return b"".join([chunk async for chunk in blobs.photos.read(
            photo_key(photo_id, thumb), 0, READ_END)])
    except BlobMissing:
        raise Refused("not_found", "The photo was not found.") from None
