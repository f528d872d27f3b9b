"""Outlets: what one consumer of a relayed visit reads from one party's camera or microphone.

A consumer is a party's peer connection (it is sent the other party's media), a staff
watcher's peer connection, or the recording. Each reads an `Outlet`: a MediaStreamTrack whose
source is the consumer's own MediaRelay subscription to the party's current incoming track, and
which switches to another source at any moment:

- When a party's session is replaced (it sent a new offer), every outlet fed by it switches to
  the new session's track. The consumer's RTP sender keeps its track, SSRC and encoder, and
  nothing is renegotiated. (`RTCRtpSender.replaceTrack` alone is not enough in aiortc: a read
  already pending on the old track is not interrupted, and when the old track ends, its
  MediaStreamError ends the sender's RTP loop for good, so no later track would ever be sent.)
- While its party has no session (not connected yet, or gone), an outlet simply waits. It ends
  only when it is stopped.
- Each frame it yields is a copy, stamped on the outlet's timeline (`Timeline`). MediaRelay
  hands the same decoded frame object to every consumer, and those frames carry the incoming
  RTP timestamps, which restart at a random origin with every session. The senders encode on
  executor threads, so stamping a shared frame in place would race. The recording's outlets
  share one timeline, which keeps its streams in step.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from typing import Any

from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

VIDEO_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_RATE)
AUDIO_GAP_S = 0.2  # audio that falls further behind the wall clock than this jumps ahead


class Timeline:
    """Presentation time in seconds since the first frame stamped on it (a monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._t0: float | None = None

    def elapsed_s(self) -> float:
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        return now - self._t0


def _copy_plane(src: Any, dst: Any) -> None:
    data = memoryview(src)
    if src.buffer_size == dst.buffer_size:
        dst.update(data)
        return
    line_src, line_dst = getattr(src, "line_size", 0), getattr(dst, "line_size", 0)
    if line_src and line_dst and line_src != line_dst:  # video rows padded differently
        width, pad = min(line_src, line_dst), b"\0" * max(0, line_dst - line_src)
        dst.update(b"".join(bytes(data[r * line_src:r * line_src + width]) + pad
                            for r in range(dst.height)))
        return
    dst.update(bytes(data[:dst.buffer_size]).ljust(dst.buffer_size, b"\0"))


def copy_frame(frame: Any) -> VideoFrame | AudioFrame:
    """A frame of one's own: same picture or samples, in a new buffer."""
    if isinstance(frame, VideoFrame):
        if frame.format.name != "yuv420p":
            return frame.reformat(format="yuv420p")  # a converted frame is a new one
        out: Any = VideoFrame(width=frame.width, height=frame.height, format="yuv420p")
    elif isinstance(frame, AudioFrame):
        out = AudioFrame(format=frame.format.name, layout=frame.layout.name,
                         samples=frame.samples)
        out.sample_rate = frame.sample_rate
    else:
        raise TypeError(f"an outlet relays decoded frames, not {type(frame).__name__}")
    for src, dst in zip(frame.planes, out.planes, strict=True):
        _copy_plane(src, dst)
    return out


def _settle(task: asyncio.Task[Any] | None) -> None:
    """Let go of a read task: cancel it, or collect its outcome so nothing is left unretrieved."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


class Outlet(MediaStreamTrack):
    """One consumer's switchable view of one party's camera or microphone (module docstring).
    `frames` counts the frames it has yielded."""

    def __init__(self, kind: str, relay: MediaRelay, timeline: Timeline | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.frames = 0
        self._relay = relay
        self._timeline = timeline or Timeline()
        self._proxy: MediaStreamTrack | None = None
        self._read: asyncio.Task[Any] | None = None
        self._switched: asyncio.Future[None] | None = None
        self._last_video_pts = -1
        self._next_audio_pts: int | None = None

    def switch(self, source: MediaStreamTrack | None) -> None:
        """Read from `source` from now on (None: wait for one)."""
        _settle(self._read)
        self._read = None
        if self._proxy is not None:
            self._proxy.stop()
        self._proxy = None
        if source is not None and self.readyState == "live":
            self._proxy = self._relay.subscribe(source, buffered=False)
        if self._switched is not None and not self._switched.done():
            self._switched.set_result(None)

    def stop(self) -> None:
        if self.readyState == "live":
            super().stop()
        self.switch(None)

    async def recv(self) -> VideoFrame | AudioFrame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            proxy = self._proxy
            if proxy is not None and self._read is None:
                self._read = asyncio.ensure_future(proxy.recv())
            self._switched = asyncio.get_running_loop().create_future()
            waiting: list[asyncio.Future[Any]] = [self._switched]
            if self._read is not None:
                waiting.append(self._read)
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            read = self._read
            if read is None or not read.done():
                continue  # switched or stopped meanwhile
            self._read = None
            try:
                frame = read.result()
            except MediaStreamError:  # that session ended: wait for the party's next one
                if self._proxy is proxy:
                    self._proxy = None
                continue
            self.frames += 1
            return self._stamp(frame)

    def _stamp(self, frame: Any) -> VideoFrame | AudioFrame:
        out = copy_frame(frame)
        elapsed = self._timeline.elapsed_s()
        if isinstance(out, VideoFrame):
            pts = max(round(elapsed * VIDEO_RATE), self._last_video_pts + 1)
            self._last_video_pts = pts
            out.time_base = VIDEO_TIME_BASE
        else:
            rate = out.sample_rate
            wall = round(elapsed * rate)
            expected = self._next_audio_pts
            # Contiguous while the audio flows; after a gap, back in step with the wall clock.
            pts = wall if expected is None or wall - expected > AUDIO_GAP_S * rate else expected
            self._next_audio_pts = pts + out.samples
            out.time_base = fractions.Fraction(1, rate)
        out.pts = pts
        return out
