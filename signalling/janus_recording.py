"""A Janus-recorded visit as one file, like the embedded relay's (signalling/remux.py): the
VideoRoom writes one `.mjr` file per publisher and m-line (`videoroom-<room>-user-<feed>-
<time>-<video|audio>-<mindex>.mjr`); `janus-pp-rec` (Debian's janus-tools) turns each into WebM
(VP8) or Ogg (Opus) without re-encoding; this muxes them into one WebM with the relay's four
streams, titled and in its order (`recording.STREAMS`: family video, person video, family
audio, person audio), on one timeline that starts at the first packet recorded: each file's
offset is its first packet's time (`u` in the .mjr header) less the earliest of them.

Not yet wired: nothing calls it when a Janus visit ends, and the .mjr files must be where
Kinwire can read them (docs/deploy.md, "Janus fleet").
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from signalling.recording import STREAMS

PP_REC = "janus-pp-rec"
CONVERT_TIMEOUT_S = 600.0  # a 2-hour visit's file converts in seconds; this only bounds a hang
NAME = re.compile(r"^videoroom-(?P<room>.+)-user-(?P<feed>family|person)-\d+-"
                  r"(?P<kind>video|audio)-\d+\.mjr$")


class ConvertError(RuntimeError):
    """janus-pp-rec failed on a file, or nothing in a visit's files could be read."""


@dataclass(frozen=True)
class Track:
    party: str
    kind: str
    mjr: Path
    first_us: int  # the first packet's time, from the .mjr header ("u")


def tracks(folder: Path, room: str) -> list[Track]:
    """The room's finished .mjr files in `folder` (a `.mjr.tmp` is still being written), the
    first file of each party and kind (a party that published again has later ones)."""
    found: dict[tuple[str, str], Track] = {}
    for path in sorted(folder.glob("*.mjr")):
        match = NAME.match(path.name)
        if match is None or match["room"] != room:
            continue
        key = (match["feed"], match["kind"])
        track = Track(match["feed"], match["kind"], path, _first_packet_us(path))
        if key not in found or track.first_us < found[key].first_us:
            found[key] = track
    return [found[key] for key in STREAMS if key in found]


def _first_packet_us(path: Path) -> int:
    done = _run([PP_REC, "--json", str(path)])
    try:
        return int(json.loads(done.stdout)["u"])
    except (ValueError, KeyError, TypeError):
        raise ConvertError(f"{path.name}: no .mjr header") from None


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise ConvertError(f"{argv[0]} is missing (Debian's janus-tools)")
    try:
        done = subprocess.run(argv, capture_output=True, text=True,  # noqa: S603 - our args
                              timeout=CONVERT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ConvertError(f"{argv[0]} took more than {CONVERT_TIMEOUT_S} s") from None
    if done.returncode != 0:
        raise ConvertError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-500:]}")
    return done


def mux(folder: Path, room: str, out: Path) -> Path:
    """The room's recording as one WebM at `out` (written as `out`.part, then renamed)."""
    found = tracks(folder, room)
    if not found:
        raise ConvertError(f"no recording of {room} in {folder}")
    start_us = min(t.first_us for t in found)
    part = out.with_name(out.name + ".part")
    with tempfile.TemporaryDirectory(prefix="kinwire-pp-rec-") as tmp:
        converted = []
        for track in found:
            suffix = "webm" if track.kind == "video" else "opus"
            target = Path(tmp) / f"{track.party}-{track.kind}.{suffix}"
            _run([PP_REC, str(track.mjr), str(target)])
            converted.append((track, target))
        _interleave(converted, start_us, part)
    part.replace(out)
    return out


def _interleave(converted: list[tuple[Track, Path]], start_us: int, part: Path) -> None:
    inputs = [av.open(str(path)) for _, path in converted]
    try:
        with av.open(str(part), "w", format="webm") as container:
            packets: list[tuple[Fraction, Any]] = []
            for (track, _), source in zip(converted, inputs, strict=True):
                stream = source.streams[0]
                target = container.add_stream_from_template(stream)
                target.metadata["title"] = f"{track.party} {track.kind}"
                offset = Fraction(track.first_us - start_us, 1_000_000)
                shift = round(offset / stream.time_base)
                for packet in source.demux(stream):
                    if packet.dts is None or not packet.size:
                        continue
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    packet.stream = target
                    packets.append((packet.dts * stream.time_base, packet))
            # One timeline: the muxer takes packets in time order across the streams.
            for _, packet in sorted(packets, key=lambda item: item[0]):
                container.mux(packet)
    finally:
        for source in inputs:
            source.close()
