"""Janus-carried visits' recordings as records (issue 16; docs/visits.md, "Recordings"; docs/
deploy.md, "Janus fleet"). Janus's VideoRoom records a non-privileged visit's room into
`.mjr` files in KINWIRE_JANUS_RECORDINGS_DIR (each room's `rec_dir`; a privileged visit's room
is made with `record` off and locked, so Janus writes nothing for it). Kinwire reads the same
folder: it is shared between the Janus servers and the Kinwire processes, or, with
KINWIRE_JANUS_RECORDINGS_URLS, each Janus host serves its own folder over HTTP(S) and Kinwire
pulls a visit's files from every host into this one before converting them, and deletes on the
hosts what it pulled once the recording is kept (server/janus_files.py).

`finish(visit_id)`: once the visit has ended, its files are converted with `janus-pp-rec` and
muxed into one WebM (signalling/janus_recording.py) on a worker thread, each janus-pp-rec run
bounded by its CONVERT_TIMEOUT_S; the file is kept through Recordings.keep (server/recordings.py:
blob first, then the row) as the visit's whole recording; the `.mjr` files are deleted only
after that. It runs on the process that ended the visit, right after the room was destroyed
(server/app.py: Meters.on_end), and from housekeeping (`sweep`).

Once, whoever gets there:
- two processes finishing the same visit at once (or one twice) both convert; Recordings.keep
  with `whole` keeps the first to insert the row and deletes the other's blob. A process that
  finds the row already there only deletes the files left over.
- a conversion that fails (janus-pp-rec missing or killed, the process stopped mid-way) leaves
  the `.mjr` files and no row: housekeeping's `sweep` lists the rooms that have files, and
  finishes each whose visit ended more than SWEEP_GRACE_S ago and has no recording (and
  deletes the files of one that has), starting none after SWEEP_BUDGET_S. A visit whose files
  never convert is tried again each sweep, and logged.
- the room's files are written until Janus closes its recorders (it renames `.mjr.tmp` to
  `.mjr`), a moment after the room is destroyed: `finish` waits up to SETTLE_S for that. A
  `.tmp` unchanged for SETTLE_S is a dead server's (killed mid-visit): taken as finished.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from server import janus_files
from server.janus_files import Remote, RemoteFolders, Unreachable
from server.recordings import Recordings
from server.schema import recordings
from signalling import janus_recording
from signalling.tables import visits
from store import Store

log = logging.getLogger("kinwire.recording")
SETTLE_S = 10.0  # Janus renames a closed recorder's file at once; a .tmp this old is a dead one's
SWEEP_GRACE_S = 60.0  # the ending process finishes within seconds; housekeeping after this
# A sweep starts no conversion after this long, so that a backlog (Kinwire was down while
# visits ended) does not hold housekeeping's other jobs: the next sweep goes on with it.
SWEEP_BUDGET_S = 60.0
POLL_S = 0.1


class JanusRecordings:
    def __init__(self, store: Store, recordings: Recordings, folder: Path, staging: Path, *,
                 settle_s: float = SETTLE_S, sweep_grace_s: float = SWEEP_GRACE_S,
                 wall: Callable[[], float] = time.time,
                 remote: RemoteFolders | None = None) -> None:
        self.store, self.recordings = store, recordings
        self.folder, self.staging = folder, staging
        self.remote = remote  # the Janus hosts' own folders, when not shared with this one
        self.settle_s, self.sweep_grace_s = settle_s, sweep_grace_s
        self.wall = wall  # the files' ages: the machine's clock, as their mtimes

    async def finish(self, visit_id: str) -> dict[str, Any] | None:
        """Keep the ended visit's recording, once (module docstring); returns its record, or
        None when there is nothing to keep (not ended, not recorded, no files). Raises
        ConvertError when the files do not convert (they stay for the next sweep)."""
        async with self.store.read() as conn:
            row = (await conn.execute(select(visits).where(visits.c.id == visit_id))).first()
        if row is None or row.status != "ended" or not row.record:
            return None
        kept = await self._kept(visit_id)
        if kept is not None:  # kept before: what is left is a crashed finisher's
            left = await asyncio.to_thread(janus_recording.files, self.folder, visit_id)
            if left:  # (or a file copied here after the recording was made: not in it)
                log.warning("visit %s: %d Janus files left after its recording %s was kept: "
                            "deleted", visit_id, len(left), kept["id"])
                await asyncio.to_thread(_delete, left)
            await self._delete_remote_leftovers(visit_id, kept["id"])
            await asyncio.to_thread(lambda: _delete(janus_files.parts(self.folder, visit_id)))
            return kept
        pulled: list[Remote] = []
        if self.remote is not None:  # Unreachable: the files stay on their hosts
            await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
            pulled = await self.remote.pull(visit_id, self.folder, self.settle_s)
        settled = await self._settled(visit_id)
        began = time.monotonic()
        self.staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        out = self.staging / f"{visit_id}.janus-{secrets.token_hex(4)}.webm"
        try:
            found = await asyncio.to_thread(janus_recording.tracks, self.folder, visit_id,
                                            settled)
            if not found:  # nothing recorded, or another finisher took the files meanwhile
                if (kept := await self._kept(visit_id)) is not None:
                    return kept
                await asyncio.to_thread(_delete, _settled_files(self.folder, visit_id, settled))
                if self.remote is not None:
                    await self.remote.delete(pulled)
                return None
            await asyncio.to_thread(janus_recording.mux_tracks, found, out, visit_id)
            start = datetime.fromtimestamp(min(t.first_us for t in found) / 1e6, UTC)
            record = await self.recordings.keep(row, out, started_at=start, whole=True)
        except janus_recording.ConvertError:
            # Another finisher kept it and deleted the files under this one's feet: done.
            if (kept := await self._kept(visit_id)) is not None:
                return kept
            raise
        finally:  # the blob store took it over, or it is not kept
            await asyncio.to_thread(_delete, [out, out.with_name(out.name + ".part")])
        # Only now: a crash before this line leaves the files for the next sweep.
        await asyncio.to_thread(lambda: _delete(janus_recording.files(self.folder, visit_id)
                                                + janus_files.parts(self.folder, visit_id)))
        if self.remote is not None:  # only what was pulled: a file listed later stays
            await self.remote.delete(pulled)
        log.info("visit %s: %d Janus files kept as recording %s in %.2f s", visit_id,
                 len(found), record["id"], time.monotonic() - began)
        return record

    async def _delete_remote_leftovers(self, visit_id: str, kept_id: str) -> None:
        if self.remote is None:
            return
        try:
            left = await self.remote.files(visit_id)
        except Unreachable as exc:  # the next sweep lists them again
            log.warning("visit %s: Janus hosts not listed for leftovers: %s", visit_id, exc)
            return
        if left:
            log.warning("visit %s: %d Janus files left on their hosts after its recording %s "
                        "was kept: deleted", visit_id, len(left), kept_id)
            await self.remote.delete(left)

    async def _kept(self, visit_id: str) -> dict[str, Any] | None:
        async with self.store.read() as conn:
            kept = (await conn.execute(select(recordings).where(
                recordings.c.visit_id == visit_id))).first()
        return None if kept is None else dict(kept._asdict())

    async def _settled(self, visit_id: str) -> float:
        """Wait (up to settle_s) until Janus closed the room's recorders; returns the cutoff
        before which a `.tmp` still there is taken as a dead server's."""
        deadline = time.monotonic() + self.settle_s
        while time.monotonic() < deadline:
            if not await asyncio.to_thread(janus_recording.pending, self.folder, visit_id,
                                           self.wall() - self.settle_s):
                break
            await asyncio.sleep(POLL_S)
        return self.wall() - self.settle_s

    async def sweep(self, now: datetime, limit: int) -> int:
        """Finish up to `limit` ended visits that still have files here (module docstring),
        starting none after SWEEP_BUDGET_S; returns how many were tried."""
        began = time.monotonic()
        rooms = await asyncio.to_thread(janus_recording.rooms, self.folder)
        if self.remote is not None:
            rooms |= await self.remote.rooms()
        if not rooms:
            return 0
        async with self.store.read() as conn:
            due = (await conn.execute(select(visits.c.id, visits.c.record).where(
                visits.c.id.in_(sorted(rooms)), visits.c.status == "ended",
                visits.c.ended_at <= now - timedelta(seconds=self.sweep_grace_s))
                .order_by(visits.c.ended_at).limit(limit))).all()
        tried = 0
        for visit_id, record in due:
            if time.monotonic() - began > SWEEP_BUDGET_S:
                break
            tried += 1
            if not record:
                log.warning("visit %s is privileged and Janus recorded it: files left in %s "
                            "for an operator", visit_id, self.folder)
                continue
            try:
                await self.finish(visit_id)
            except Exception:
                log.exception("visit %s: Janus recording not kept; tried again next sweep",
                              visit_id)
        return tried


def _settled_files(folder: Path, visit_id: str, settled: float) -> list[Path]:
    """The room's files but those still being written: with no media found, all empty."""
    fresh = set(janus_recording.pending(folder, visit_id, settled))
    return [path for path in janus_recording.files(folder, visit_id) if path not in fresh]


def _delete(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
