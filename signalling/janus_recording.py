"""A Janus-recorded visit as one file, like the embedded relay's (signalling/remux.py): the
VideoRoom writes one `.mjr` file per publisher and m-line (`videoroom-<room>-user-<feed>-
<time>-<video|audio>-<mindex>.mjr`); `janus-pp-rec` (Debian's janus-tools) turns each into WebM
(VP8) or Ogg (Opus) without re-encoding; this muxes them into one WebM with the relay's four
streams, titled and in its order (`recording.STREAMS`: family video, person video, family
audio, person audio), on one timeline that starts at the first packet recorded: each file's
offset is its first packet's time (`u` in the .mjr header, the Janus server's clock) less the
earliest of them. A party that published more than once (it rejoined, or the visit was placed
again on another server after its first died) has one file per publication: they follow one
another in its stream, and the time between them stays a gap, as in the relay's recording.

Janus writes `<name>.mjr.tmp` and renames it `<name>.mjr` when the recorder closes (the room
destroyed, the publisher gone). A server killed mid-visit never renames its files: a `.tmp`
unchanged since `settled_before` (a caller's cutoff) is taken as finished.

server/janus_recordings.py calls this when a recorded Janus visit ends, and stores the result
through the blob store as the visit's recording (docs/visits.md, "Recordings").
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
                  r"(?P<kind>video|audio)-\d+\.mjr(?P<tmp>\.tmp)?$")


class ConvertError(RuntimeError):
    """janus-pp-rec failed on a file, or nothing in a visit's files could be read."""


@dataclass(frozen=True)
class Track:
    party: str
    kind: str
    mjr: Path
    first_us: int  # the first packet's time, from the .mjr header ("u")


def files(folder: Path, room: str) -> list[Path]:
    """Every .mjr file of the room in `folder`, finished or not (`.mjr.tmp`)."""
    found = []
    for path in sorted(folder.glob("videoroom-*.mjr*")):
        match = NAME.match(path.name)
        if match is not None and match["room"] == room:
            found.append(path)
    return found


def rooms(folder: Path) -> set[str]:
    """The rooms (visit ids) that have .mjr files in `folder`."""
    return {match["room"] for path in folder.glob("videoroom-*.mjr*")
            if (match := NAME.match(path.name)) is not None}


def pending(folder: Path, room: str, settled_before: float | None = None) -> list[Path]:
    """The room's `.mjr.tmp` files still being written: changed at or after `settled_before`
    (a time.time()), or all of them when it is None."""
    return [path for path in files(folder, room) if path.name.endswith(".tmp")
            and (settled_before is None or _mtime(path) >= settled_before)]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # renamed meanwhile: the .mjr is listed next time


def tracks(folder: Path, room: str, settled_before: float | None = None) -> list[Track]:
    """The room's finished .mjr files in `folder` that hold media, in STREAMS order, each
    party's and kind's in the order they were recorded. A `.mjr.tmp` counts only when
    unchanged since `settled_before` (its server died); otherwise it is still being written.
    A file with no header holds no packet (Janus writes the header with the first one: a
    camera that never sent a frame): left out."""
    found = []
    for path in files(folder, room):
        match = NAME.match(path.name)
        assert match is not None
        if match["tmp"] and (settled_before is None or _mtime(path) >= settled_before):
            continue
        first_us = _first_packet_us(path)
        if first_us is not None:
            found.append(Track(match["feed"], match["kind"], path, first_us))
    order = {key: index for index, key in enumerate(STREAMS)}
    return sorted(found, key=lambda t: (order[(t.party, t.kind)], t.first_us))


def _first_packet_us(path: Path) -> int | None:
    """The .mjr header's first packet time; None when the file has no header (no packet)."""
    done = _run([PP_REC, "--json", str(path)])
    if not done.stdout.strip():
        return None
    try:
        return int(json.loads(done.stdout)["u"])
    except (ValueError, KeyError, TypeError):
        raise ConvertError(f"{path.name}: unreadable .mjr header") from None


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


def mux(folder: Path, room: str, out: Path, settled_before: float | None = None) -> Path:
    """The room's recording as one WebM at `out` (written as `out`.part, then renamed)."""
    return mux_tracks(tracks(folder, room, settled_before), out, room)


def mux_tracks(found: list[Track], out: Path, room: str = "") -> Path:
    if not found:
        raise ConvertError(f"no recording of {room}")
    start_us = min(t.first_us for t in found)
    part = out.with_name(out.name + ".part")
    with tempfile.TemporaryDirectory(prefix="kinwire-pp-rec-") as tmp:
        converted = []
        for index, track in enumerate(found):
            suffix = "webm" if track.kind == "video" else "opus"
            target = Path(tmp) / f"{index}-{track.party}-{track.kind}.{suffix}"
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
            targets: dict[tuple[str, str], Any] = {}
            last: dict[tuple[str, str], Fraction] = {}  # per stream: timestamps only grow
            for (track, _), source in zip(converted, inputs, strict=True):
                stream, key = source.streams[0], (track.party, track.kind)
                if key not in targets:  # a party's later publications join its first's stream
                    targets[key] = container.add_stream_from_template(stream)
                    targets[key].metadata["title"] = f"{track.party} {track.kind}"
                target = targets[key]
                offset = Fraction(track.first_us - start_us, 1_000_000)
                shift = round(offset / stream.time_base)
                for packet in source.demux(stream):
                    if packet.dts is None or not packet.size:
                        continue
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    at = packet.dts * stream.time_base
                    if at <= last.get(key, Fraction(-1)):
                        continue  # two publications overlapping (should not happen): the first
                    last[key] = at
                    packet.stream = target
                    packets.append((at, packet))
            # One timeline: the muxer takes packets in time order across the streams.
            for _, packet in sorted(packets, key=lambda item: item[0]):
                container.mux(packet)
    finally:
        for source in inputs:
            source.close()
