"""What a WebRTC peer of Kinwire needs besides signalling: the ICE configuration (relay-only
through loopback TURN in tests, see docs/turn.md) and synthetic camera and microphone tracks.
Shared by the reference visit client and the server's relay."""

from __future__ import annotations

import array
import asyncio
import fractions
import ipaddress
import math
import time
from typing import Any
from urllib.parse import urlsplit

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

# --- ICE configuration -------------------------------------------------------------------------

def _url_host(url: str) -> str:
    """The host of a `stun:`/`turn:`/`turns:` URL (`turn:[::1]:3478?transport=udp` -> `::1`)."""
    rest = url.split(":", 1)[1].split("?", 1)[0]
    return urlsplit("//" + rest).hostname or ""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def rtc_configuration(ice_servers: list[dict[str, Any]], *,
                      loopback_only: bool = False) -> RTCConfiguration:
    """RTCConfiguration from WebRTC `iceServers` dicts (as GET /visits/{id}/ice returns them).

    An empty list stays empty: aiortc then uses no STUN server at all (it falls back to a public
    STUN server only when iceServers is None, which this never passes).

    `loopback_only`: relay-only ICE (`iceTransportPolicy: relay`), and every server URL must be on
    a loopback address, else ValueError. With the relay policy aioice gathers no host and no
    server-reflexive candidate; its only socket is the TURN client's, connected to the TURN
    server; and the coturn of docs/turn.md relays to 127.0.0.1 alone. The server's own aiortc
    peer in relay mode uses the same function in tests.
    """
    servers = []
    for entry in ice_servers:
        urls = entry["urls"] if isinstance(entry["urls"], list) else [entry["urls"]]
        if loopback_only:
            far = [u for u in urls if not _is_loopback(_url_host(u))]
            if far:
                raise ValueError(f"loopback_only, but these ICE servers are not: {far}")
        servers.append(RTCIceServer(urls=urls, username=entry.get("username"),
                                    credential=entry.get("credential")))
    if loopback_only and not any(u.startswith("turn") for s in servers for u in s.urls):
        raise ValueError("loopback_only needs a TURN server on a loopback address")
    policy = RTCIceTransportPolicy.RELAY if loopback_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


# --- synthetic camera and microphone -----------------------------------------------------------

class SyntheticVideoTrack(VideoStreamTrack):
    """A moving test pattern (a diagonal gradient that scrolls, and a bar that sweeps across),
    `width` x `height` at `fps`. Built from bytes, so no numpy is needed."""

    def __init__(self, width: int = 640, height: int = 480, fps: int = 30) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._n = 0
        self._t0: float | None = None
        self._ramp = bytes((16 + (i * 219) // max(1, width - 1)) for i in range(width)) * 2

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._t0 + self._n / self.fps - time.monotonic()))
        frame = VideoFrame(width=self.width, height=self.height, format="yuv420p")
        y, u, v = frame.planes
        shift = (self._n * 8) % self.width
        bar = (self._n * 4) % self.height
        rows = []
        for row in range(self.height):
            start = (shift + row) % self.width
            line = self._ramp[start:start + self.width]
            if bar <= row < bar + 16:
                line = b"\xeb" * self.width
            rows.append(line.ljust(y.line_size, b"\x10"))
        y.update(b"".join(rows))
        chroma_rows = (self.height + 1) // 2
        u.update(bytes([96 + (self._n % 64)]) * (u.line_size * chroma_rows))
        v.update(b"\x80" * (v.line_size * chroma_rows))
        frame.pts = int(self._n * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._n += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A quiet 400 Hz tone, 48 kHz mono, 20 ms frames (400 Hz is a whole number of cycles per
    frame, so frames join without a click)."""

    kind = "audio"
    RATE = 48000
    SAMPLES = 960

    def __init__(self, amplitude: float = 0.05) -> None:
        super().__init__()
        pcm = array.array("h", (int(amplitude * 32767 * math.sin(2 * math.pi * 400 * i / self.RATE))
                               for i in range(self.SAMPLES)))
        self._pcm = pcm.tobytes()
        self._n = 0
        self._t0: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._t0 + self._n * 0.02 - time.monotonic()))
        frame = AudioFrame(format="s16", layout="mono", samples=self.SAMPLES)
        frame.planes[0].update(self._pcm)
        frame.pts = self._n * self.SAMPLES
        frame.sample_rate = self.RATE
        frame.time_base = fractions.Fraction(1, self.RATE)
        self._n += 1
        return frame


