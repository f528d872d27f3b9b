"""The blob-store port: where large immutable files (photos, visit recordings) are kept.

Two implementations: `files.FileBlobs` (a folder on the local filesystem, the embedded
default) and `s3.S3Blobs` (S3 or an S3-compatible store: `put` is an upload, multipart for
large files, followed by removing the local file, `read` a ranged GET, `size` a HEAD, `delete`
a DELETE). `configured.open_blobs` picks one from the settings. tests/integration/test_blobs.py
holds the
contract and runs it against both (S3 on a private SeaweedFS).

Contract
- Keys are relative names of `/`-separated segments of `[A-Za-z0-9_.-]`, neither empty nor
  `.` or `..`, at most KEY_MAX characters; anything else raises ValueError.
- Blobs are immutable: `put(key, path)` stores the local file at `path` under `key` and takes it
  over (the local file is gone when `put` returns), returning the blob's size in bytes. It never
  replaces a blob: if `key` exists it raises BlobExists and leaves both alone. When `put`
  returns, the blob survives a crash of this process (it is on disk, or acknowledged by the
  store). A `put` that fails leaves no blob under `key`.
- `size(key)` is the blob's size in bytes, or None when there is none.
- `read(key, start, end)` yields the bytes [start, end) in order, in chunks of at most
  CHUNK_BYTES (fewer when the blob is shorter than `end`); 0 <= start <= end. It raises
  BlobMissing (before yielding anything) when there is no blob under `key`.
- `delete(key)` removes the blob and returns True, or returns False when there was none: it is
  idempotent, so two processes expiring the same blob at once both succeed (on S3 both may be
  told True).
- `listing()` yields every blob as a `Listed(key, size, modified_at)` (UTC), in no set order
  and never anything that is not a blob (a folder store's `.partial/` work in progress, its
  staged copies). A blob put while a listing runs may or may not appear.
- A store that cannot be reached, stalls past its timeout, or fails on its side raises
  BlobUnavailable (a folder store raises OSError instead).
- Calls never block the event loop (file work runs on threads, S3 calls are async).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

KEY_MAX = 200
CHUNK_BYTES = 256 * 1024
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    modified_at: datetime  # when it was put (UTC)


class BlobExists(Exception):
    """`put` to a key that already holds a blob."""


class BlobMissing(Exception):
    """`read` of a key that holds no blob."""


class BlobUnavailable(Exception):
    """The store did not answer in time or failed on its side (after the client's retries):
    answered 503 `unavailable` like a database fault, never taken as a missing blob."""


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or len(key) > KEY_MAX or any(
            p in ("", ".", "..") or not _SEGMENT.match(p) for p in parts):
        raise ValueError(f"not a blob key: {key!r}")
    return key


class BlobStore(Protocol):
    async def put(self, key: str, path: Path) -> int: ...

    async def size(self, key: str) -> int | None: ...

    def read(self, key: str, start: int, end: int) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> bool: ...

    def listing(self) -> AsyncIterator[Listed]: ...
