"""Orphans: blobs no record references, and work-in-progress files a crash left behind
(docs/operations.md, "Orphans"). Both sweeps run from housekeeping (server/housekeeping.py).

- Blobs (the elected process): a blob of the recordings store whose key is no `recordings`
  or `recording_segments` row's `location`, or of the photo store whose photo id has no
  `photos` row, put more than `grace_s` ago, is deleted, and each deletion written to the audit log
  (`blob.orphan_deleted`, actor `system`, with the store, key and bytes). The grace is what
  makes it safe: a recording's blob is put before its row is inserted (server/recordings.py)
  and a photo's before its message's transaction, so a young blob with no row may be one whose
  row is about to be written; `grace_s` is far longer than any such gap. A process killed
  between the put and the insert leaves exactly such a blob: this is what collects it.
- Work in progress (every process, its own folders, since each writes on its own disk): files
  under `<blob dir>/.partial/` (photos being staged) and `<recordings dir>/.partial/`
  (recordings being written, `<visit>.webm.part`, and finished files waiting to be put) not
  modified for `grace_s`, and not a recording this process is writing now, are deleted and
  audited (`blob.partial_deleted`, with the folder, name, bytes and last modification). A live
  recording writes its file every second or so; a `.part` that stopped changing belongs to a
  process that died mid-visit (the relay moved on and recorded the rest as the next segment).
Two processes sweeping at once both try each deletion; only the one whose delete took effect
writes the audit entry.

Ages are measured on the machine's clock (`wall`), not the app's: a blob's time is the
store's and a file's the filesystem's, both real, while the app's clock may be moved (tests
run months ahead), which made every fresh blob look old enough to delete.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from server import audit
from server.schema import photos, recording_segments, recordings
from store import Store

log = logging.getLogger("kinwire.housekeeping")
CHECK_BATCH = 500  # keys looked up in one statement


@dataclass(frozen=True)
class Partial:
    path: Path
    bytes: int
    modified_at: datetime


def _photo_id(key: str) -> str:
    return key.split(".", 1)[0]  # <id>.jpg, <id>.thumb.jpg (server/photos.py photo_key)


async def _referenced(store: Store, kind: str, keys: list[str]) -> set[str]:
    """Which of the keys (recordings: blob keys; photos: photo ids) a row names."""
    columns = [recordings.c.location, recording_segments.c.location] \
        if kind == "recordings" else [photos.c.id]
    found: set[str] = set()
    async with store.read() as conn:
        for i in range(0, len(keys), CHECK_BATCH):
            chunk = keys[i:i + CHECK_BATCH]
            for column in columns:
                found.update((await conn.execute(select(column).where(
                    column.in_(chunk)))).scalars().all())
    return found


def real_now() -> datetime:
    return datetime.now(UTC)


async def sweep_blobs(store: Store, stores: dict[str, Any], now: datetime, grace_s: float,
                      limit: int, wall: Callable[[], datetime] = real_now) -> int:
    """Delete up to `limit` orphan blobs older than the grace (by `wall`) from each store
    ("recordings", "photos"); how many this call deleted. `now` stamps the audit entries."""
    deleted = 0
    cutoff = wall() - timedelta(seconds=grace_s)
    for kind, blobs in stores.items():
        old = [item async for item in blobs.listing() if item.modified_at <= cutoff]
        names = [item.key if kind == "recordings" else _photo_id(item.key) for item in old]
        known = await _referenced(store, kind, sorted(set(names)))
        for item, name in zip(old, names, strict=True):
            if name in known:
                continue
            if deleted >= limit:
                return deleted
            if not await blobs.delete(item.key):
                continue  # another process got there first
            facility = item.key.split("/", 1)[0] if kind == "recordings" and "/" in item.key \
                else None
            async with store.write() as conn:
                await audit.record(conn, actor_id="system", actor_role="system",
                                   action="blob.orphan_deleted", facility_id=facility,
                                   target=item.key, at=now, details={
                                       "store": kind, "bytes": item.size,
                                       "put_at": item.modified_at.isoformat()})
            log.warning("housekeeping: deleted orphan blob %s/%s (%d bytes, no row names it)",
                        kind, item.key, item.size)
            deleted += 1
    return deleted


def stale_partials(folders: list[Path], cutoff: datetime,
                   in_use: Callable[[Path], bool]) -> list[Partial]:
    found = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            modified = datetime.fromtimestamp(info.st_mtime, UTC)
            path = Path(entry.path)
            if entry.is_file(follow_symlinks=False) and modified <= cutoff \
                    and not in_use(path):
                found.append(Partial(path, info.st_size, modified))
    return found


async def sweep_partials(store: Store, folders: list[Path], now: datetime, grace_s: float,
                         in_use: Callable[[Path], bool],
                         wall: Callable[[], datetime] = real_now) -> int:
    """Delete this process's work-in-progress files older than the grace (by `wall`); how
    many. `now` stamps the audit entries."""
    cutoff = wall() - timedelta(seconds=grace_s)
    deleted = 0
    for partial in await asyncio.to_thread(stale_partials, folders, cutoff, in_use):
        try:
            await asyncio.to_thread(partial.path.unlink)
        except FileNotFoundError:
            continue  # another process sharing the folder got there first
        async with store.write() as conn:
            await audit.record(conn, actor_id="system", actor_role="system",
                               action="blob.partial_deleted", target=partial.path.name,
                               at=now, details={
                                   "folder": str(partial.path.parent), "bytes": partial.bytes,
                                   "modified_at": partial.modified_at.isoformat()})
        log.warning("housekeeping: deleted %s (%d bytes, unchanged since %s)", partial.path,
                    partial.bytes, partial.modified_at.isoformat())
        deleted += 1
    return deleted
