"""A pre-encoded VP8 camera for the relay benchmark's clients.

The benchmark measures the server's relay, so the load generator must not spend its one core
encoding video: each client sends the same few seconds of VP8, encoded once at start, as
packets (aiortc sends an `av.Packet` from a track as is, without its encoder). A key frame
every second lets a receiver that asks for one (PLI) recover within a second.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from signalling.media import SyntheticVideoTrack

CLOCK = 90_000


async def encode_clip(width: int, height: int, fps: int, seconds: float,
                      bitrate: int = 1_000_000) -> list[bytes]:
    """`seconds` of the synthetic test pattern as VP8 frames (bytes each), key frame first."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps, 1)
    codec.bit_rate = bitrate
    codec.options = {"deadline": "realtime", "cpu-used": "8", "g": str(fps),
                     "lag-in-frames": "0", "error-resilient": "1"}
    pattern = SyntheticVideoTrack(width, height, fps=1_000_000)  # no pacing: as fast as it goes
    frames: list[bytes] = []
    for n in range(int(seconds * fps)):
        frame = await pattern.recv()
        frame.pts, frame.time_base = n, codec.time_base
        frames.extend(bytes(packet) for packet in codec.encode(frame))
    frames.extend(bytes(packet) for packet in codec.encode(None))
    pattern.stop()
    return frames


class ClipTrack(MediaStreamTrack):
    """Sends `frames` in a loop at `fps`, each as an encoded packet."""

    kind = "video"

    def __init__(self, frames: list[bytes], fps: int) -> None:
        super().__init__()
        self.frames, self.fps = frames, fps
        self._n = 0
        self._t0: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._t0 + self._n / self.fps - time.monotonic()))
        packet = av.Packet(self.frames[self._n % len(self.frames)])
        packet.pts = self._n * CLOCK // self.fps
        packet.time_base = fractions.Fraction(1, CLOCK)
        self._n += 1
        return packet


async def encode_tone(seconds: float = 1.0) -> list[bytes]:
    """`seconds` of the 400 Hz test tone as Opus packets (20 ms each), so that the load
    generator's clients do not run an Opus encoder each."""
    from signalling.media import ToneAudioTrack

    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format = 48_000, "stereo", "s16"
    codec.time_base = fractions.Fraction(1, 48_000)
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=48_000)
    tone = ToneAudioTrack()
    tone_frames = []
    for _ in range(round(seconds * 50)):
        tone._t0 = None  # no pacing
        tone_frames.append(await tone.recv())
    packets: list[bytes] = []
    for frame in tone_frames:
        for resampled in resampler.resample(frame):
            packets.extend(bytes(p) for p in codec.encode(resampled))
    tone.stop()
    return packets


class ToneClip(MediaStreamTrack):
    """Sends Opus `packets` in a loop, one every 20 ms."""

    kind = "audio"

    def __init__(self, packets: list[bytes]) -> None:
        super().__init__()
        self.packets = packets
        self._n = 0
        self._t0: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._t0 + self._n * 0.02 - time.monotonic()))
        packet = av.Packet(self.packets[self._n % len(self.packets)])
        packet.pts = self._n * 960
        packet.time_base = fractions.Fraction(1, 48_000)
        self._n += 1
        return packet
