"""The blob-store contract (server/blobs/__init__.py), run against every implementation: the
local folder (FileBlobs) and S3 (S3Blobs) on a real S3 server, a private SeaweedFS started
once for this module (tests/support/seaweed.py, the `seaweed` fixture).

Adversaries: two processes putting the same key at once (requests sent all at once); a client
asking for ranges past the end; keys that try to climb out of the store; an upload that fails
half way (a multipart upload of a file that vanishes); a caller holding the wrong secret.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from server.blobs import CHUNK_BYTES, BlobExists, BlobMissing, BlobStore
from server.blobs.files import FileBlobs
from server.blobs.s3 import PART_BYTES_MIN, S3Connection
from tests.support.seaweed import BUCKET, Seaweed

pytestmark = pytest.mark.timeout(120)


def connect(s3: Seaweed, prefix: str, **extra: object) -> S3Connection:
    options = {"endpoint_url": s3.endpoint, "region": "us-east-1",
               "access_key_id": s3.access_key_id, "secret_access_key": s3.secret_access_key,
               **extra}
    return S3Connection(f"s3://{BUCKET}/{prefix}", **options)


@pytest.fixture(params=["files", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "files":
        yield FileBlobs(tmp_path / "store")
        return
    connection = connect(request.getfixturevalue("seaweed"), f"t-{secrets.token_hex(4)}")
    try:
        yield connection.store("recordings")
    finally:
        await connection.close()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


async def collect(blobs: BlobStore, key: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in blobs.read(key, start, end)])


async def test_blob_put_takes_the_file_over_and_never_replaces(
        blobs: BlobStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 3000  # 768,000 bytes: several chunks
    source = write(tmp_path / "a.bin", data)
    assert await blobs.put("fac_1/rec_1.webm", source) == len(data)
    assert not source.exists()
    assert await blobs.size("fac_1/rec_1.webm") == len(data)
    assert await collect(blobs, "fac_1/rec_1.webm", 0, len(data)) == data
    assert await collect(blobs, "fac_1/rec_1.webm", 1000, 5000) == data[1000:5000]
    assert await collect(blobs, "fac_1/rec_1.webm", 700_000, 10**9) == data[700_000:]
    assert await collect(blobs, "fac_1/rec_1.webm", len(data), 10**9) == b""
    assert await collect(blobs, "fac_1/rec_1.webm", 5, 5) == b""
    chunks = [c async for c in blobs.read("fac_1/rec_1.webm", 0, len(data))]
    assert max(len(c) for c in chunks) <= CHUNK_BYTES
    other = write(tmp_path / "b.bin", b"other")
    with pytest.raises(BlobExists):
        await blobs.put("fac_1/rec_1.webm", other)
    assert other.exists() and await blobs.size("fac_1/rec_1.webm") == len(data)
    assert await collect(blobs, "fac_1/rec_1.webm", 0, 10) == data[:10]
    with pytest.raises(BlobMissing):
        await collect(blobs, "fac_1/nothing.webm", 0, 10)
    with pytest.raises(BlobMissing):
        await collect(blobs, "fac_1/nothing.webm", 3, 3)
    assert await blobs.size("fac_1/nothing.webm") is None
    assert await blobs.delete("fac_1/rec_1.webm") is True
    assert await blobs.delete("fac_1/rec_1.webm") is False  # idempotent
    assert await blobs.size("fac_1/rec_1.webm") is None


async def test_the_listing_names_every_blob_and_nothing_else(blobs: BlobStore,
                                                             tmp_path: Path) -> None:
    """What the orphan sweep reads (server/orphans.py): every blob with its size and when it
    was put; a folder store's work in progress (`.partial/`) is not a blob."""
    # The store stamps files (and S3 objects) with the real clock, so "put after a moment
    # just before" is read on it; an ordering, so the date and hour cannot matter.
    before = datetime.now(UTC) - timedelta(minutes=5)
    await blobs.put("fac_1/rec_1.webm", write(tmp_path / "a", b"a" * 10))
    await blobs.put("p_2.jpg", write(tmp_path / "b", b"b" * 3))
    if isinstance(blobs, FileBlobs):
        (blobs.root / ".partial").mkdir()
        (blobs.root / ".partial" / "vis_1.webm.part").write_bytes(b"half")
    listed = {item.key: item async for item in blobs.listing()}
    assert {key: item.size for key, item in listed.items()} == {"fac_1/rec_1.webm": 10,
                                                                "p_2.jpg": 3}
    assert all(item.modified_at > before for item in listed.values())
    await blobs.delete("p_2.jpg")
    assert [item.key async for item in blobs.listing()] == ["fac_1/rec_1.webm"]


async def test_two_puts_of_one_key_at_once_store_exactly_one(
        blobs: BlobStore, tmp_path: Path) -> None:
    sources = [write(tmp_path / f"{n}.bin", bytes([n]) * 100_000) for n in range(8)]
    results = await asyncio.gather(*(blobs.put("k/same", s) for s in sources),
                                   return_exceptions=True)
    winners = [i for i, r in enumerate(results) if r == 100_000]
    assert len(winners) == 1, results
    assert all(isinstance(r, BlobExists) for i, r in enumerate(results) if i not in winners)
    assert await collect(blobs, "k/same", 0, 100_000) == bytes([winners[0]]) * 100_000
    losers = [s for i, s in enumerate(sources) if i not in winners]
    assert all(s.exists() for s in losers), "a refused put leaves its file alone"


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", ".", "a/./b", "sp ace", "x" * 201,
                                 "a/\x00"])
async def test_blob_keys_outside_the_grammar_are_refused(blobs: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        await blobs.size(key)


# --- S3 only ----------------------------------------------------------------------------------

async def test_a_large_file_goes_up_in_parts_and_reads_back_by_range(
        seaweed: Seaweed, tmp_path: Path) -> None:
    connection = connect(seaweed, f"t-{secrets.token_hex(4)}", part_bytes=PART_BYTES_MIN)
    blobs = connection.store()
    try:
        data = secrets.token_bytes(2 * PART_BYTES_MIN + 123_457)  # three parts, the last short
        assert await blobs.put("big/one.webm", write(tmp_path / "big", data)) == len(data)
        assert await blobs.size("big/one.webm") == len(data)
        assert await collect(blobs, "big/one.webm", 0, len(data)) == data
        edge = PART_BYTES_MIN
        assert await collect(blobs, "big/one.webm", edge - 10, edge + 10) == \
            data[edge - 10:edge + 10]
        with pytest.raises(BlobExists):  # the multipart path refuses to replace too
            await blobs.put("big/one.webm", write(tmp_path / "again", data))
        client = await connection.client()
        listed = await client.list_multipart_uploads(Bucket=BUCKET, Prefix=blobs.prefix)
        assert not listed.get("Uploads"), "no upload is left open"
    finally:
        await connection.close()


async def test_a_put_that_fails_half_way_leaves_no_blob(
        seaweed: Seaweed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connection = connect(seaweed, f"t-{secrets.token_hex(4)}", part_bytes=PART_BYTES_MIN)
    blobs = connection.store()
    import server.blobs.s3 as s3

    reads = 0
    real = s3._read_part

    def failing(path: Path, offset: int, length: int) -> bytes:
        nonlocal reads
        reads += 1
        if reads == 2:
            raise OSError("disk gone")
        return real(path, offset, length)

    monkeypatch.setattr(s3, "_read_part", failing)
    try:
        source = write(tmp_path / "big", secrets.token_bytes(PART_BYTES_MIN + 10))
        with pytest.raises(OSError):
            await blobs.put("half/one.webm", source)
        assert reads == 2 and source.exists()
        assert await blobs.size("half/one.webm") is None
        client = await connection.client()
        listed = await client.list_multipart_uploads(Bucket=BUCKET, Prefix=blobs.prefix)
        assert not listed.get("Uploads"), "the upload was aborted"
    finally:
        await connection.close()


async def test_the_wrong_secret_is_refused_and_never_shown(
        seaweed: Seaweed, tmp_path: Path) -> None:
    wrong = "not-the-secret-" + secrets.token_hex(8)
    connection = connect(seaweed, "x", secret_access_key=wrong)
    try:
        blobs = connection.store()
        assert wrong not in repr(connection) + repr(blobs)
        with pytest.raises(Exception) as refused:
            await blobs.put("a/b", write(tmp_path / "f", b"data"))
        assert wrong not in str(refused.value)
        assert (tmp_path / "f").exists()
    finally:
        await connection.close()


@pytest.mark.parametrize("size", [1000, PART_BYTES_MIN + 1], ids=["single", "multipart"])
async def test_a_retried_upload_that_had_landed_is_this_put_not_a_conflict(
        seaweed: Seaweed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """botocore retries a PUT whose answer was lost; the retry meets the object its first try
    wrote and is refused (412). The state a retry meets is made here by writing that object
    first, with the id the put will carry: the put must count it as its own, and a put with
    another id must not."""
    import server.blobs.s3 as s3

    connection = connect(seaweed, f"t-{secrets.token_hex(4)}", part_bytes=PART_BYTES_MIN)
    blobs = connection.store()
    try:
        client = await connection.client()
        data = secrets.token_bytes(size)
        await client.put_object(Bucket=BUCKET, Key=f"{blobs.prefix}/mine", Body=data,
                                Metadata={s3.PUT_ID: "first-try"})
        monkeypatch.setattr(s3, "put_id", lambda: "first-try")
        source = write(tmp_path / "mine", data)
        assert await blobs.put("mine", source) == size
        assert not source.exists()
        monkeypatch.setattr(s3, "put_id", lambda: "someone-else")
        other = write(tmp_path / "other", data)
        with pytest.raises(BlobExists):
            await blobs.put("mine", other)
        assert other.exists()
    finally:
        await connection.close()


def test_the_blob_url_settings_are_checked_at_start() -> None:
    from server.settings import Settings, SettingsError

    for bad in ({"blob_url": "https://bucket.example/prefix"}, {"blob_url": "s3:///prefix"},
                {"blob_url": "s3://b/p", "s3_access_key_id": "AKIA"}):
        with pytest.raises(SettingsError):
            Settings(**bad).validate()
    good = Settings(blob_url="s3://b/p", s3_access_key_id="AKIA",
                    s3_secret_access_key="very-secret").validate()
    assert "very-secret" not in repr(good)
