"""Recordings as records (docs/visits.md, "Recordings"): each complete recording file of a
relay-mode visit is kept in the blob store (server/blobs) and described by a `recordings` row;
the facility's `recording_retention_days` sets how long; an expired one is deleted, blob first,
and the deletion written to the audit log.

Order of writes, so that a crash at any point leaves nothing unaccounted for:
- keep: the blob is put first, then the row inserted. If the insert fails the blob is deleted;
  a process killed between the two leaves a blob with no row (found by comparing the store with
  the blob keys; no such sweep exists yet), never a row without its file.
- expire: the blob is deleted first (idempotent), then the row, with its audit entry in the same
  transaction. A process killed between the two leaves a row whose blob is gone, which the next
  run deletes; two processes expiring at once both delete the blob, and only the one whose
  DELETE removed the row writes the audit entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import av
from sqlalchemy import func, select

from server import audit
from server.blobs import BlobStore
from server.facilities import RETENTION_DAYS_DEFAULT
from server.schema import facilities, recordings
from store import Store
from store.ids import ordered_id

log = logging.getLogger("kinwire.recording")
# By the file's suffix: the forwarding relay remuxes into WebM; the transcoding relay (the
# benchmarks' baseline) encodes H.264 and AAC into Matroska.
CONTENT_TYPES = {".webm": "video/webm", ".mkv": "video/x-matroska"}
EXPIRE_BATCH = 100  # rows per expiry pass; the sweeper runs again 30 s later


def _inspect(path: Path) -> tuple[int, str, int]:
    """(bytes, SHA-256 hex, duration in ms) of a finished recording file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    with av.open(str(path)) as container:
        duration_ms = (container.duration or 0) // 1000
    return size, digest.hexdigest(), duration_ms


def view(row: Any) -> dict[str, Any]:
    return {"id": row.id, "visit_id": row.visit_id, "segment": row.segment,
            "facility_id": row.facility_id, "family_id": row.family_id,
            "person_id": row.person_id, "started_at": row.started_at.isoformat(),
            "ended_at": row.ended_at.isoformat(), "duration_s": row.duration_ms / 1000,
            "bytes": row.bytes, "sha256": row.sha256, "content_type": row.content_type,
            "retain_until": row.retain_until.isoformat()}


class Recordings:
    def __init__(self, store: Store, blobs: BlobStore, clock: Callable[[], datetime]) -> None:
        self.store, self.blobs, self.clock = store, blobs, clock

    async def keep(self, visit: Any, path: Path) -> dict[str, Any]:
        """Store a finished recording file of `visit` (a visits row) and describe it; the
        local file is taken over. Its end is now; its start, now less its duration."""
        content_type = CONTENT_TYPES[path.suffix]
        size, sha256, duration_ms = await asyncio.to_thread(_inspect, path)
        ended_at = self.clock()
        recording_id = ordered_id("rec")  # ids sort by time: GET /recordings pages by id
        key = f"{visit.facility_id}/{recording_id}{path.suffix}"
        await self.blobs.put(key, path)
        try:
            async with self.store.write() as conn:
                settings = (await conn.execute(select(facilities.c.settings).where(
                    facilities.c.id == visit.facility_id))).scalar_one()
                days = settings.get("recording_retention_days", RETENTION_DAYS_DEFAULT)
                segment = (await conn.execute(select(func.max(recordings.c.segment)).where(
                    recordings.c.visit_id == visit.id))).scalar() or 0
                values = dict(
                    id=recording_id, visit_id=visit.id, segment=segment + 1,
                    facility_id=visit.facility_id, family_id=visit.family_id,
                    person_id=visit.person_id, started_at=ended_at - timedelta(
                        milliseconds=duration_ms), ended_at=ended_at, duration_ms=duration_ms,
                    bytes=size, sha256=sha256, content_type=content_type, location=key,
                    retain_until=ended_at + timedelta(days=days), created_at=ended_at)
                await conn.execute(recordings.insert().values(**values))
        except BaseException:
            await self.blobs.delete(key)
            raise
        log.info("visit %s: recording %s kept (%d bytes, %.1f s)", visit.id, recording_id,
                 size, duration_ms / 1000)
        return values

    async def expire(self, now: datetime, limit: int = EXPIRE_BATCH) -> int:
        """Delete up to `limit` recordings whose retention has passed; returns how many this
        call deleted (module docstring: order, crashes, concurrent runs)."""
        async with self.store.read() as conn:
            due = (await conn.execute(select(recordings).where(
                recordings.c.retain_until <= now).order_by(recordings.c.retain_until)
                .limit(limit))).all()
        deleted = 0
        for row in due:
            await self.blobs.delete(row.location)
            async with self.store.write() as conn:
                gone = await conn.execute(recordings.delete().where(recordings.c.id == row.id))
                if gone.rowcount != 1:
                    continue  # another process got there first
                await audit.record(conn, actor_id="system", actor_role="system",
                                   action="recording.expired", facility_id=row.facility_id,
                                   target=row.id, at=now, details={
                                       "visit_id": row.visit_id, "segment": row.segment,
                                       "bytes": row.bytes, "sha256": row.sha256,
                                       "retain_until": row.retain_until.isoformat()})
            deleted += 1
        return deleted
