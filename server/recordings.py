"""Recordings as records (docs/visits.md, "Recordings"): each complete recording file of a
relay-mode visit is kept in the blob store (server/blobs) as a segment (`recording_segments`)
of the visit's one `recordings` row (a visit whose relay moved to another process mid-visit
has two or more segments, each with its own SHA-256);
the facility's `recording_retention_days` sets how long; an expired one is deleted, blob first,
and the deletion written to the audit log.

Order of writes, so that a crash at any point leaves nothing unaccounted for:
- keep: the blob is put first, then the row inserted. If the insert fails the blob is deleted;
  a process killed between the two leaves a blob with no row (housekeeping deletes it once
  older than KINWIRE_ORPHAN_GRACE_S, server/orphans.py), never a row without its file.
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

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from server import audit
from server.blobs import BlobStore
from server.facilities import RETENTION_DAYS_DEFAULT
from server.schema import facilities, recording_segments, recordings
from store import Record, Store
from store.ids import ordered_id

log = logging.getLogger("kinwire.recording")
# By the file's suffix: the forwarding relay remuxes into WebM; the transcoding relay (the
# benchmarks' baseline) encodes H.264 and AAC into Matroska.
CONTENT_TYPES = {".webm": "video/webm", ".mkv": "video/x-matroska"}
EXPIRE_BATCH = 100  # rows per expiry pass; the sweeper runs again 30 s later


def _inspect(path: Path) -> tuple[int, str, int]:
    """(bytes, SHA-256 hex, duration in ms) of a finished recording file."""
    import av  # here, not at start: a process keeps a recording only after relaying one

    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    with av.open(str(path)) as container:
        duration_ms = (container.duration or 0) // 1000
    return size, digest.hexdigest(), duration_ms


def view(row: Record, segments: list[Any] | None = None) -> dict[str, Any]:
    shown = {"id": row.id, "visit_id": row.visit_id, "segment": row.segment,
             "facility_id": row.facility_id, "family_id": row.family_id,
             "person_id": row.person_id, "started_at": row.started_at.isoformat(),
             "ended_at": row.ended_at.isoformat(), "duration_s": row.duration_ms / 1000,
             "bytes": row.bytes, "sha256": row.sha256, "content_type": row.content_type,
             "retain_until": row.retain_until.isoformat()}
    if segments is not None:
        shown["segments"] = [
            {"segment": s.segment, "started_at": s.started_at.isoformat(),
             "ended_at": s.ended_at.isoformat(), "duration_s": s.duration_ms / 1000,
             "bytes": s.bytes, "sha256": s.sha256, "content_type": s.content_type}
            for s in segments]
    return shown


async def segments_of(conn: AsyncConnection, recording_id: str) -> list[Any]:
    return list((await conn.execute(select(recording_segments).where(
        recording_segments.c.recording_id == recording_id)
        .order_by(recording_segments.c.segment))).all())


class Recordings:
    def __init__(self, store: Store, blobs: BlobStore, clock: Callable[[], datetime]) -> None:
        self.store, self.blobs, self.clock = store, blobs, clock

    async def keep(self, visit: Record, path: Path, ended_at: datetime | None = None, *,
                   started_at: datetime | None = None, whole: bool = False) -> dict[str, Any]:
        """Store a finished recording file of `visit` (a visits row) as the next segment of
        the visit's recording (the record is made with the first); the local file is taken
        over. Its end is `ended_at` (now by default); its start, that less its duration; or,
        given `started_at`, its end is that plus its duration.
        `whole`: the file is the visit's whole recording (Janus's, muxed once the visit
        ended, server/janus_recordings.py): kept only if the visit has no recording yet; if
        it has (another process kept it first), the blob is deleted and that one returned."""
        content_type = CONTENT_TYPES[path.suffix]
        size, sha256, duration_ms = await asyncio.to_thread(_inspect, path)
        now = self.clock()
        if started_at is not None:
            ended_at = started_at + timedelta(milliseconds=duration_ms)
        ended_at = ended_at or now
        started_at = ended_at - timedelta(milliseconds=duration_ms)
        segment_key = ordered_id("rec")  # ids sort by time: GET /recordings pages by id
        key = f"{visit.facility_id}/{segment_key}{path.suffix}"
        await self.blobs.put(key, path)
        try:
            for attempt in range(2):  # a first segment kept at once by two processes: retry
                try:
                    values = await self._record(visit, segment_key, key, started_at, ended_at,
                                                duration_ms, size, sha256, content_type, now,
                                                whole)
                    break
                except IntegrityError:
                    if attempt:
                        raise
        except BaseException:
            await self.blobs.delete(key)
            raise
        if values.get("duplicate"):
            await self.blobs.delete(key)
            log.info("visit %s: recording %s was kept already", visit.id, values["id"])
            return values
        log.info("visit %s: recording %s segment %d kept (%d bytes, %.1f s)", visit.id,
                 values["id"], values["segment"], size, duration_ms / 1000)
        return values

    async def _record(self, visit: Record, new_id: str, key: str, started_at: datetime,
                      ended_at: datetime, duration_ms: int, size: int, sha256: str,
                      content_type: str, now: datetime, whole: bool) -> dict[str, Any]:
        async with self.store.write() as conn:
            row = (await conn.execute(select(recordings).where(
                recordings.c.visit_id == visit.id).with_for_update())).first()
            if row is not None and whole:
                return {**row._asdict(), "duplicate": True}
            if row is None:
                settings = (await conn.execute(select(facilities.c.settings).where(
                    facilities.c.id == visit.facility_id))).scalar_one()
                days = settings.get("recording_retention_days", RETENTION_DAYS_DEFAULT)
                values = dict(
                    id=new_id, visit_id=visit.id, segment=1, facility_id=visit.facility_id,
                    family_id=visit.family_id, person_id=visit.person_id,
                    started_at=started_at, ended_at=ended_at, duration_ms=duration_ms,
                    bytes=size, sha256=sha256, content_type=content_type, location=key,
                    retain_until=ended_at + timedelta(days=days), created_at=now)
                await conn.execute(recordings.insert().values(**values))
            else:
                values = {**row._asdict(), "segment": row.segment + 1,
                          "started_at": min(row.started_at, started_at),
                          "ended_at": max(row.ended_at, ended_at),
                          "duration_ms": row.duration_ms + duration_ms,
                          "bytes": row.bytes + size}
                values["retain_until"] = max(row.retain_until, row.retain_until + (
                    values["ended_at"] - row.ended_at))
                await conn.execute(recordings.update().where(recordings.c.id == row.id).values(
                    segment=values["segment"], started_at=values["started_at"],
                    ended_at=values["ended_at"], duration_ms=values["duration_ms"],
                    bytes=values["bytes"], retain_until=values["retain_until"]))
            await conn.execute(recording_segments.insert().values(
                recording_id=values["id"], segment=values["segment"], started_at=started_at,
                ended_at=ended_at, duration_ms=duration_ms, bytes=size, sha256=sha256,
                content_type=content_type, location=key, created_at=now))
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
            async with self.store.read() as conn:
                segments = await segments_of(conn, row.id)
            for segment in segments:
                await self.blobs.delete(segment.location)
            await self.blobs.delete(row.location)  # the first segment's (a row from before)
            async with self.store.write() as conn:
                await conn.execute(recording_segments.delete().where(
                    recording_segments.c.recording_id == row.id))
                gone = await conn.execute(recordings.delete().where(recordings.c.id == row.id))
                if gone.rowcount != 1:
                    continue  # another process got there first
                await audit.record(conn, actor_id="system", actor_role="system",
                                   action="recording.expired", facility_id=row.facility_id,
                                   target=row.id, at=now, details={
                                       "visit_id": row.visit_id, "segments": row.segment,
                                       "bytes": row.bytes, "sha256": row.sha256,
                                       "retain_until": row.retain_until.isoformat()})
            deleted += 1
        return deleted
