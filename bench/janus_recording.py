"""What keeping a Janus-carried visit's recording costs (docs/BENCHMARKS.md, "Janus recordings").

    .venv/bin/python -m bench.janus_recording [--seconds 60]

Starts a private Janus from deploy/janus/ (tests/support/janus.py), makes one recorded room
through Kinwire's engine, and has two aiortc parties publish into it for `--seconds` (a
synthetic 320x240 camera at 15 frames a second and a tone each, as in the tests); ends the
room, then times the steps server/janus_recordings.py runs off the event loop: reading each
.mjr header (`janus-pp-rec --json`), converting and muxing (`janus_recording.mux_tracks`), and
the SHA-256 and duration of the result (server/recordings.py `_inspect`). Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from server.recordings import _inspect
from signalling import janus_recording
from signalling.janus import JanusConfig, JanusEngine
from tests.integration.test_janus_events import publishing
from tests.support.janus import private_janus

ROOM = "vis_bench"


async def record(folder: Path, seconds: float) -> Path:
    """The room's .mjr files after `seconds` of both parties publishing; returns their folder."""
    with private_janus(folder, events_url="http://127.0.0.1:9/unused") as janus:
        s = janus.secrets
        async with aiohttp.ClientSession() as http:
            engine = JanusEngine(http, JanusConfig(
                (janus.api_url,), (janus.admin_url,), s.api_secret, s.admin_secret,
                s.token_secret, s.room_admin_key, str(janus.recordings_dir)))
            room = await engine.create_room(ROOM, record=True)
            until = datetime.now(UTC) + timedelta(hours=1)
            try:
                async with publishing(janus, engine.credentials(room, "family", "f", until)), \
                        publishing(janus, engine.credentials(room, "person", "p", until)):
                    await asyncio.sleep(seconds)
            finally:
                await engine.end(room)
                await engine.close()
        for _ in range(100):  # Janus closes the files a moment after the room goes (10 s at most)
            if not janus_recording.pending(janus.recordings_dir, ROOM):
                break
            await asyncio.sleep(0.1)
        return janus.recordings_dir


def convert(folder: Path, out: Path) -> dict[str, float]:
    began = time.monotonic()
    found = janus_recording.tracks(folder, ROOM)
    read = time.monotonic()
    janus_recording.mux_tracks(found, out, ROOM)
    muxed = time.monotonic()
    size, _, duration_ms = _inspect(out)
    done = time.monotonic()
    return {"files": len(found), "mjr_bytes": sum(t.mjr.stat().st_size for t in found),
            "webm_bytes": size, "duration_s": duration_ms / 1000,
            "headers_s": round(read - began, 3), "convert_mux_s": round(muxed - read, 3),
            "sha256_duration_s": round(done - muxed, 3), "total_s": round(done - began, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kinwire-bench-janus-") as tmp:
        folder = asyncio.run(record(Path(tmp) / "janus", args.seconds))
        result = convert(folder, Path(tmp) / "out.webm")
    print(json.dumps({"published_s": args.seconds, **result}))


if __name__ == "__main__":
    main()
