"""A forwarded visit's recording: the parties' encoded frames written as they are into one
WebM file (Matroska with VP8 and Opus, which browsers play) per visit, with no decoding or
encoding.

The four streams, in `recording.STREAMS` order and titled as there: family video, person
video (VP8), family audio, person audio (Opus). All are on one timeline that starts at the first
frame recorded (`outlets.Timeline`, through each stream's `forwarding.Feed`), so they play in
step and a stretch with no media stays a gap of that length. Each video stream starts at a
keyframe.

Matroska's header needs each video's size, which only a VP8 keyframe tells: frames are held
(up to PENDING_MAX) until both parties' first keyframes have come, or until the limit, when a
missing size is taken as DEFAULT_SIZE (players read the real one from the keyframe anyway).

Files are named as in `recording.reserve` (`<visit_id>.webm.part`, renamed when complete;
the relay then hands the file to server/recordings.py, which keeps it in the blob store).
Muxing runs on one worker thread per recording (tens of microseconds a frame, but file writes
do not belong on the event loop). Frames reach it in batches, every FLUSH_S: waking the thread
for each frame (160 a second a visit) cost more than everything else the relay does (~30% of
the relay process's samples in a py-spy profile of 4 visits, in the GIL hand-off of
`Condition.notify`). A recording more than BATCHES_MAX batches behind drops frames (counted in
/metrics as outcome "backlog", consumer "recording"; a video stream then waits for its next
keyframe). A visit in which no frame ever arrived leaves no file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import secrets
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import av

from signalling.forwarding import Feed, Source, vp8_size
from signalling.outlets import Timeline
from signalling.recording import DEFAULT_SIZE, STREAMS, RecordingFile

log = logging.getLogger("kinwire.recording")
PENDING_MAX = 500
FLUSH_S = 0.2
BATCHES_MAX = 10  # 2 s of frames waiting for the writer
_STOP = None


class RemuxRecording:
    """Records four sources (in STREAMS order) into one file; see the module docstring."""

    def __init__(self, directory: Path, visit_id: str, sources: Sequence[Source]) -> None:
        if [s.kind for s in sources] != [kind for _, kind in STREAMS]:
            raise ValueError("sources must follow STREAMS")
        self.directory, self.visit_id = directory, visit_id
        self.path: Path | None = None  # the final name, once the file is complete
        timeline = Timeline()
        self.feeds = [Feed(s, timeline, partial(self._put, i), "recording")
                      for i, s in enumerate(sources)]
        self._queue: queue.Queue[Any] = queue.Queue()  # batches, then _STOP
        self._batch: list[tuple[int, av.Packet]] = []
        self._flush_at: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._write, name=f"rec-{self.visit_id}",
                                        daemon=True)
        self._thread.start()
        for feed in self.feeds:
            feed.start()

    def _put(self, index: int, packet: av.Packet) -> bool:
        if self._closed or self._queue.qsize() >= BATCHES_MAX:
            return self._closed
        self._batch.append((index, packet))
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(FLUSH_S, self._flush)
        return True

    def _flush(self) -> None:
        self._flush_at = None
        if self._batch:
            self._queue.put(self._batch)
            self._batch = []

    async def close(self) -> Path | None:
        """Stop taking frames, mux what is queued, finish the file. Returns its path (None when
        nothing was recorded). Idempotent."""
        if not self._closed:
            self._closed = True
            for feed in self.feeds:
                feed.stop()
            if self._flush_at is not None:
                self._flush_at.cancel()
            self._flush()
            self._queue.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        return self.path

    # -- the worker thread

    def _write(self) -> None:
        pending: list[tuple[int, av.Packet]] = []  # until both video sizes are known
        sizes: dict[int, tuple[int, int]] = {}
        with RecordingFile(self.directory, self.visit_id, ".webm") as out:
            container = None
            while (batch := self._queue.get()) is not _STOP:
                for index, packet in batch:
                    if container is not None:
                        _mux(container, index, packet)
                        continue
                    if index < 2 and index not in sizes and (size := vp8_size(bytes(packet))):
                        sizes[index] = size
                    pending.append((index, packet))
                    if len(sizes) == 2 or len(pending) >= PENDING_MAX:
                        container = out.open(partial(_open, sizes=sizes))
                        for held in pending:
                            _mux(container, *held)
                        pending = []
            if container is None and pending:
                container = out.open(partial(_open, sizes=sizes))
                for held in pending:
                    _mux(container, *held)
            if container is not None:
                self.path = out.finish()


# Written through to the file a packet at a time, in clusters of at most a second: a process
# that dies mid-visit leaves a `.part` readable up to its last second (the next relay salvages
# it, signalling/relay.py). With FFmpeg's defaults a 32 KB buffer and 5 s clusters stayed in
# memory: a short visit's file was still empty on disk, and could not be salvaged.
DURABLE = {"flush_packets": "1", "cluster_time_limit": "1000"}


def _open(path: Path, sizes: dict[int, tuple[int, int]]) -> Any:
    container = av.open(str(path), mode="w", format="webm", options=DURABLE)
    for index, (party, kind) in enumerate(STREAMS):
        if kind == "video":
            stream: Any = container.add_stream("vp8", rate=30)
            stream.width, stream.height = sizes.get(index, DEFAULT_SIZE)
        else:
            # Opened as an encoder only for its OpusHead (Matroska's CodecPrivate); nothing is
            # ever encoded with it.
            stream = container.add_stream("libopus", rate=48_000)
            stream.layout = "stereo"
        stream.metadata["title"] = f"{party} {kind}"
    return container


def _mux(container: Any, index: int, packet: av.Packet) -> None:
    packet.stream = container.streams[index]
    try:
        container.mux(packet)
    except av.FFmpegError as exc:  # one bad packet must not end the recording
        log.warning("recording: packet dropped (%s)", exc)


def salvage(part: Path) -> Path | None:
    """A recording's `.part` file left by a process that died mid-visit (Matroska reads up to
    its last complete cluster), copied packet by packet into a complete file beside it,
    `<name>.salvaged.webm`, which is returned; the `.part` is then removed. None, and the
    `.part` left for housekeeping's orphan sweep, when nothing in it can be read; None too when
    another salvager has it.

    Two may find the same file (two processes on a shared folder taking the visit over, or a
    drain's handover beside a takeover): the `.part` is claimed first by an atomic rename, so
    only one reads it and writes the salvaged file (both did, into the same name, and one
    left it behind). The claimed file is touched: the orphan sweep leaves it alone while
    this runs."""
    stem = part.name.removesuffix(".part").removesuffix(".webm")
    done = part.with_name(f"{stem}.salvaged.webm")
    claimed = part.with_name(f"{part.name}.salvaging-{secrets.token_hex(4)}")
    try:
        part.rename(claimed)
    except FileNotFoundError:
        return None  # another salvager's
    os.utime(claimed)
    copied = 0
    try:
        with av.open(str(claimed)) as source, av.open(str(done), "w", format="webm") as out:
            streams = {}
            for stream in source.streams:
                streams[stream.index] = out.add_stream_from_template(stream)
                streams[stream.index].metadata["title"] = stream.metadata.get("title", "")
            with contextlib.suppress(av.FFmpegError):  # the torn end of the file
                for packet in source.demux():
                    if packet.dts is None or not packet.size:
                        continue
                    packet.stream = streams[packet.stream.index]
                    out.mux(packet)
                    copied += 1
    except (av.FFmpegError, OSError) as exc:
        log.warning("recording %s could not be salvaged (%s)", part.name, exc)
        copied = 0
    if not copied:
        done.unlink(missing_ok=True)
        claimed.rename(part)  # as it was, for the orphan sweep
        return None
    claimed.unlink()
    return done
