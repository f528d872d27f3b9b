"""A relay-mode visit's recording: one Matroska file per visit, encoded off the event loop.

What is recorded: both parties' cameras and both microphones, as four streams in this order,
each titled in the file's metadata:

    0 "family video"   H.264 (libx264, preset veryfast)
    1 "person video"   H.264
    2 "family audio"   AAC, 48 kHz
    3 "person audio"   AAC, 48 kHz

All four are on one timeline that starts at the first frame recorded (`outlets.Timeline`), so
they play in step, and a stretch with no media (a party away) stays a gap of the same length.
Both video streams are coded at the size of the first video frame recorded; a frame of another
size is scaled to it. Audio that arrives before any video is held (up to PENDING_MAX frames)
until the first video frame fixes that size.

The file is written as `<dir>/<visit_id>.mkv.part` and renamed to `<visit_id>.mkv` when it is
closed: a file under the final name is complete. Matroska stays readable up to its last
cluster, so the `.part` of a process that died mid-visit keeps what was recorded. If a visit's
relay starts again on another process, the next file is `<visit_id>-2.mkv`, and so on.
A visit in which no frame ever arrived leaves no file.

Encoding runs on one worker thread per recording: x264 costs milliseconds per frame, which the
event loop that serves the sockets cannot spare. The loop only copies frame references into a
queue. When the encoder falls BACKLOG_MAX frames behind, new frames are dropped and counted in
`dropped`; the loop is never blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import os
import queue
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from signalling.outlets import Outlet

log = logging.getLogger("kinwire.recording")

STREAMS = (("family", "video"), ("person", "video"), ("family", "audio"), ("person", "audio"))
DEFAULT_SIZE = (640, 480)  # only when no video arrived at all
BACKLOG_MAX = 300
PENDING_MAX = 500
_STOP = None


def reserve(directory: Path, visit_id: str, suffix: str = ".mkv") -> tuple[Path, Path]:
    """Pick the visit's next free file name, and create its `.part` file so that nobody else
    picks it. Returns (part, final)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    n = 1
    while True:
        stem = visit_id if n == 1 else f"{visit_id}-{n}"
        final = directory / f"{stem}{suffix}"
        part = directory / f"{stem}{suffix}.part"
        if not final.exists():
            try:
                os.close(os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass
            else:
                return part, final
        n += 1


class RecordingFile:
    """The file a recording's worker thread writes: its visit's next free name, a `.part` from
    `open` (what a relay taking over salvages) until `finish` renames it; closed whatever
    happens. As a context, a failure inside is logged and ends the file, not the thread."""

    def __init__(self, directory: Path, visit_id: str, suffix: str = ".mkv") -> None:
        self.directory, self.visit_id, self.suffix = directory, visit_id, suffix
        self.container: Any = None
        self._names: tuple[Path, Path] | None = None

    def open(self, make: Callable[[Path], Any]) -> Any:
        """The container, made by `make` on a newly reserved `.part`."""
        self._names = reserve(self.directory, self.visit_id, self.suffix)
        self.container = make(self._names[0])
        return self.container

    def finish(self) -> Path:
        """Close the complete file and give it its final name."""
        container, self.container = self.container, None
        container.close()
        assert self._names is not None
        part, final = self._names
        part.rename(final)
        return final

    def __enter__(self) -> RecordingFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        if kind is not None:
            log.exception("recording of visit %s failed", self.visit_id)
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.close()
        return kind is not None and issubclass(kind, Exception)


class Recording:
    """Records the four outlets (in STREAMS order) into one file; see the module docstring."""

    def __init__(self, directory: Path, visit_id: str, outlets: list[Outlet]) -> None:
        if [o.kind for o in outlets] != [kind for _, kind in STREAMS]:
            raise ValueError("outlets must follow STREAMS")
        self.directory, self.visit_id, self.outlets = directory, visit_id, outlets
        self.path: Path | None = None  # the final name, once the file is complete
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._closed = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._write, name=f"rec-{self.visit_id}",
                                        daemon=True)
        self._thread.start()
        self._readers = [asyncio.create_task(self._read(i, o), name=f"rec-{self.visit_id}-{i}")
                         for i, o in enumerate(self.outlets)]

    async def _read(self, index: int, outlet: Outlet) -> None:
        while True:
            try:
                frame = await outlet.recv()
            except MediaStreamError:
                return
            if self._queue.qsize() >= BACKLOG_MAX:
                self.dropped += 1
                continue
            self._queue.put((index, frame))

    async def close(self) -> Path | None:
        """Stop reading, let the thread encode what is queued, flush and close the file.
        Returns the recording's path (None when nothing was recorded). Idempotent."""
        if not self._closed:
            self._closed = True
            for outlet in self.outlets:
                outlet.stop()
            for task in self._readers:
                task.cancel()
            for task in self._readers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._queue.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self.dropped:
            log.warning("recording of visit %s dropped %d frames (encoder behind)",
                        self.visit_id, self.dropped)
        return self.path

    # -- the worker thread

    def _write(self) -> None:
        pending: list[tuple[int, Any]] = []
        size = DEFAULT_SIZE
        with RecordingFile(self.directory, self.visit_id) as out:
            container = None
            while (item := self._queue.get()) is not _STOP:
                index, frame = item
                if container is None:
                    if not isinstance(frame, VideoFrame):
                        pending.append(item)
                        del pending[:-PENDING_MAX]
                        continue
                    size = (frame.width, frame.height)
                    container = out.open(partial(self._open, size=size))
                    for held in pending:
                        self._encode(container, size, *held)
                    pending = []
                self._encode(container, size, index, frame)
            if container is None and pending:
                container = out.open(partial(self._open, size=size))
                for held in pending:
                    self._encode(container, size, *held)
            if container is not None:
                for stream in container.streams:
                    with contextlib.suppress(av.FFmpegError):
                        for packet in stream.encode(None):
                            container.mux(packet)
                self.path = out.finish()

    @staticmethod
    def _open(path: Path, size: tuple[int, int]) -> Any:
        container = av.open(str(path), mode="w", format="matroska")
        for party, kind in STREAMS:
            if kind == "video":
                stream: Any = container.add_stream("libx264", rate=30)
                stream.width, stream.height = size
                stream.pix_fmt = "yuv420p"
                stream.codec_context.time_base = fractions.Fraction(1, 90_000)
                stream.codec_context.options = {"preset": "veryfast"}
            else:
                stream = container.add_stream("aac", rate=48_000)
            stream.metadata["title"] = f"{party} {kind}"
        return container

    def _encode(self, container: Any, size: tuple[int, int], index: int, frame: Any) -> None:
        stream = container.streams[index]
        if isinstance(frame, VideoFrame) and (frame.width, frame.height) != size:
            pts, time_base = frame.pts, frame.time_base
            frame = frame.reformat(width=size[0], height=size[1], format="yuv420p")
            frame.pts, frame.time_base = pts, time_base
        try:
            for packet in stream.encode(frame):
                container.mux(packet)
        except av.FFmpegError as exc:  # one bad frame must not end the recording
            log.warning("recording of visit %s: frame dropped (%s)", self.visit_id, exc)
